"""An LRU store of attention key/value states for token prefixes.

ICM prompts share long leading runs: the leave-one-out prompt for example i starts with every
demo before i, a prompt after a label change matches the old one up to the changed demo, and a
prompt after a demo is appended matches the old one in full. The store keeps the per-layer
keys and values of whole prompts it has seen; the states of any shorter prefix are a slice of
them, because a causal model's state at position t depends only on tokens 0..t.

Entries keep the *full* keys and values of every layer, also for sliding-window layers (which
a transformers DynamicCache built from a config truncates to the window): a truncated window
can't be cut back to an arbitrary shorter prefix, a full one can.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

# Per layer: (keys, values), each [batch=1, kv_heads, seq_len, head_dim].
LayerKV = tuple[torch.Tensor, torch.Tensor]


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where two 1-D token arrays agree."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = a[:n] != b[:n]
    first = int(differs.argmax())
    return n if not differs[first] else first


@dataclass
class _Entry:
    tokens: np.ndarray  # int64 [seq_len]
    layers: tuple[LayerKV, ...]
    storages: dict[int, int]  # the memory blocks its tensors view: data pointer -> bytes


def _storages(layers: tuple[LayerKV, ...]) -> dict[int, int]:
    """Memory blocks behind the tensors. Entries stored from one batched forward are views into
    one padded buffer per layer, and that buffer is freed only when its last entry goes, so the
    budget counts blocks, not view sizes."""
    blocks = {}
    for pair in layers:
        for tensor in pair:
            storage = tensor.untyped_storage()
            blocks[storage.data_ptr()] = storage.nbytes()
    return blocks


class PrefixKVStore:
    """Key/value states of token sequences, looked up by longest common prefix, evicted LRU
    once their total size passes budget_bytes."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be non-negative")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest use first
        self._next_id = 0
        self._block_users: dict[int, int] = {}  # data pointer -> entries viewing that block
        self.nbytes = 0  # bytes of the blocks the entries hold
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._block_users.clear()
        self.nbytes = 0

    def longest_prefix(
        self, tokens: np.ndarray, limit: int | None = None
    ) -> tuple[tuple[LayerKV, ...] | None, int]:
        """Return (per-layer states of the first n tokens, n) for the largest n <= limit that some
        entry shares with tokens, or (None, 0). The slices are views; the entry becomes most recent."""
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        best_id, best_length = None, 0
        for entry_id, entry in self._entries.items():
            length = min(common_prefix_length(entry.tokens, tokens), limit)
            if length > best_length:
                best_id, best_length = entry_id, length
        if best_id is None:
            return None, 0
        self._entries.move_to_end(best_id)
        layers = self._entries[best_id].layers
        return tuple((k[:, :, :best_length], v[:, :, :best_length]) for k, v in layers), best_length

    def match_length(self, tokens: np.ndarray, limit: int | None = None) -> int:
        """The n longest_prefix would return, without touching recency."""
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        return max((min(common_prefix_length(e.tokens, tokens), limit) for e in self._entries.values()), default=0)

    def put(self, tokens: np.ndarray, layers: tuple[LayerKV, ...]) -> bool:
        """Store the states of a full token sequence; return whether they were kept.

        An entry whose tokens are a prefix of the new ones is dropped (the new entry covers it);
        if an entry already covers the new tokens, that one is refreshed instead of storing twice.
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        for entry_id, entry in list(self._entries.items()):
            shared = common_prefix_length(entry.tokens, tokens)
            if shared == len(tokens):  # already covered (equal or longer entry)
                self._entries.move_to_end(entry_id)
                return True
            if shared == len(entry.tokens):  # strict prefix of the new one
                self._remove(entry_id)
        blocks = _storages(layers)
        if sum(blocks.values()) > self.budget_bytes:
            return False
        self._entries[self._next_id] = _Entry(tokens, layers, blocks)
        self._next_id += 1
        for pointer, size in blocks.items():
            users = self._block_users.get(pointer, 0)
            self.nbytes += size if users == 0 else 0
            self._block_users[pointer] = users + 1
        self.release(self.nbytes - self.budget_bytes)
        return True

    def release(self, nbytes: int, keep_bytes: int = 0) -> int:
        """Evict least recently used entries until nbytes are freed, stopping before an eviction
        would leave less than keep_bytes held; the budget stays as it is. Returns the bytes freed."""
        before = self.nbytes
        while self._entries and self.nbytes > before - nbytes:
            oldest = next(iter(self._entries))
            if self.nbytes - self._freed_by_removing(oldest) < keep_bytes:
                break
            self._remove(oldest)
            self.evictions += 1
        return before - self.nbytes

    def _freed_by_removing(self, entry_id: int) -> int:
        return sum(size for pointer, size in self._entries[entry_id].storages.items() if self._block_users[pointer] == 1)

    def _remove(self, entry_id: int) -> None:
        for pointer, size in self._entries.pop(entry_id).storages.items():
            self._block_users[pointer] -= 1
            if self._block_users[pointer] == 0:
                del self._block_users[pointer]
                self.nbytes -= size
