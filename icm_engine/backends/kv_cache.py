"""An LRU store of attention key/value states for token prefixes.

ICM prompts share long leading runs: the leave-one-out prompt for example i starts with every
demo before i, a prompt after a label change matches the old one up to the changed demo, and a
prompt after a demo is appended matches the old one in full. The store keeps the per-layer
keys and values of whole prompts it has seen; the states of any shorter prefix are a slice of
them, because a causal model's state at position t depends only on tokens 0..t.

Entries keep the *full* keys and values of every layer, also for sliding-window layers (which
a transformers DynamicCache built from a config truncates to the window): a truncated window
can't be cut back to an arbitrary shorter prefix, a full one can.

Storage dtype (KV_DTYPES): "compute" keeps the states as the model computed them (exact);
"bfloat16" halves them and "int8" quarters them, each turned back into the compute dtype on
fetch. int8 is symmetric with one scale per (layer, head, token) over head_dim: a token's stored
values then depend on that token alone, so a prefix sliced from any entry, stored by any batch,
dequantizes to the same numbers, and appending to a prompt never changes what its prefix holds
(a scale per channel over the sequence would change with every token appended). Gemma 3
normalizes its keys (q/k norm), so no channel dominates a token's scale there. Neither is exact:
on Gemma 3 270M bfloat16 moved a step's U by up to 0.05 nats and int8 by up to 0.19
(docs/speed.md), so "compute" is the default. KV_DTYPES is declared in base.py.

Eviction: least recently used first, except the entry that covers the longest prefix of the
`hold` sequence (the scorer's current demonstration order, which every next proposal's prompts
start with): it goes last.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .base import KV_DTYPES

# Per layer: (keys, values), each [batch=1, kv_heads, seq_len, head_dim].
LayerKV = tuple[torch.Tensor, torch.Tensor]

_INT8_LEVELS = 127  # symmetric: -127..127, so that negating a value never overflows


def common_prefix_length(a: np.ndarray, b: np.ndarray) -> int:
    """Number of leading positions where two 1-D token arrays agree."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = a[:n] != b[:n]
    first = int(differs.argmax())
    return n if not differs[first] else first


# One stored tensor: the parts it is kept as (the tensor itself; or int8 values and their scales).
Packed = tuple[torch.Tensor, ...]


def pack(tensor: torch.Tensor, kv_dtype: str) -> Packed:
    """A keys or values tensor [1, heads, seq, dim] in the storage dtype. "compute" keeps the
    tensor itself (a view stays a view: no copy)."""
    if kv_dtype == "compute":
        return (tensor,)
    if kv_dtype == "bfloat16":
        return (tensor.to(torch.bfloat16),)
    if kv_dtype == "int8":
        # [1, heads, seq, 1]; zero vectors get scale 1, not 0, so that unpacking never divides by it
        scale = tensor.abs().amax(dim=-1, keepdim=True).float() / _INT8_LEVELS
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        values = torch.round(tensor.float() / scale).clamp_(-_INT8_LEVELS, _INT8_LEVELS).to(torch.int8)
        return values, scale
    raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")


def unpack(packed: Packed, length: int, dtype: torch.dtype) -> torch.Tensor:
    """The first `length` positions of a packed tensor, in `dtype` (a view when stored as computed)."""
    if len(packed) == 2:
        values, scale = packed
        return (values[:, :, :length].float() * scale[:, :, :length]).to(dtype)
    return packed[0][:, :, :length].to(dtype)


class StoredPrefix(Sequence[LayerKV]):
    """The first `length` positions of a stored entry, per layer, unpacked to the compute dtype
    when a layer is read: a batched forward unpacks only its own rows, never a whole wave's. It
    holds the packed tensors, so it stays readable after its entry is evicted."""

    def __init__(self, layers: tuple[tuple[Packed, Packed], ...], length: int, dtype: torch.dtype):
        self._layers, self.length, self.dtype = layers, length, dtype

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, layer: int) -> LayerKV:  # type: ignore[override]  (no slices)
        keys, values = self._layers[layer]
        return unpack(keys, self.length, self.dtype), unpack(values, self.length, self.dtype)


@dataclass
class _Entry:
    tokens: np.ndarray  # int64 [seq_len]
    layers: tuple[tuple[Packed, Packed], ...]  # per layer: keys, values
    dtype: torch.dtype  # the compute dtype the states are handed back in
    storages: dict[int, int]  # the memory blocks its tensors view: data pointer -> bytes


def _storages(layers: tuple[tuple[Packed, Packed], ...]) -> dict[int, int]:
    """Memory blocks behind the tensors. Entries stored from one batched forward are views into
    one padded buffer per layer, and that buffer is freed only when its last entry goes, so the
    budget counts blocks, not view sizes."""
    blocks = {}
    for pair in layers:
        for packed in pair:
            for tensor in packed:
                storage = tensor.untyped_storage()
                blocks[storage.data_ptr()] = storage.nbytes()
    return blocks


class PrefixKVStore:
    """Key/value states of token sequences, looked up by longest common prefix, kept in kv_dtype,
    evicted least recently used first (the held entry last) once their total size passes budget_bytes."""

    def __init__(self, budget_bytes: int, kv_dtype: str = "compute"):
        if budget_bytes < 0:
            raise ValueError("budget_bytes must be non-negative")
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r}")
        self.budget_bytes = budget_bytes
        self.kv_dtype = kv_dtype
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # oldest use first
        self._next_id = 0
        self._block_users: dict[int, int] = {}  # data pointer -> entries viewing that block
        self._held: np.ndarray | None = None  # the sequence whose longest stored prefix is evicted last
        self.nbytes = 0  # bytes of the blocks the entries hold
        self.peak_nbytes = 0  # the most nbytes has been
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._block_users.clear()
        self.nbytes = 0

    def hold(self, tokens: np.ndarray | None) -> None:
        """Evict last the entry sharing the longest prefix with tokens (None: plain LRU). The
        scorer passes its current demonstration order: every prompt of the next step starts with
        a prefix of it, so that entry serves every one of them, whatever else is evicted."""
        self._held = None if tokens is None else np.asarray(tokens, dtype=np.int64)

    def longest_prefix(
        self, tokens: np.ndarray, limit: int | None = None
    ) -> tuple[StoredPrefix | None, int]:
        """Return (per-layer states of the first n tokens, n) for the largest n <= limit that some
        entry shares with tokens, or (None, 0). Each layer reads in the compute dtype (views of the
        entry when stored as computed); the entry becomes most recent."""
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        best_id, best_length = None, 0
        for entry_id, entry in self._entries.items():
            length = min(common_prefix_length(entry.tokens, tokens), limit)
            if length > best_length:
                best_id, best_length = entry_id, length
        if best_id is None:
            return None, 0
        self._entries.move_to_end(best_id)
        entry = self._entries[best_id]
        return StoredPrefix(entry.layers, best_length, entry.dtype), best_length

    def match_length(self, tokens: np.ndarray, limit: int | None = None) -> int:
        """The n longest_prefix would return, without touching recency."""
        limit = len(tokens) if limit is None else min(limit, len(tokens))
        return max((min(common_prefix_length(e.tokens, tokens), limit) for e in self._entries.values()), default=0)

    def put(self, tokens: np.ndarray, layers: tuple[LayerKV, ...], copy: bool = False) -> bool:
        """Store the states of a full token sequence; return whether they were kept.

        An entry whose tokens are a prefix of the new ones is dropped (the new entry covers it);
        if an entry already covers the new tokens, that one is refreshed instead of storing twice.
        copy: keep a copy, not views (a caller storing few rows of a large batch buffer, which a
        view would keep alive whole).
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        for entry_id, entry in list(self._entries.items()):
            shared = common_prefix_length(entry.tokens, tokens)
            if shared == len(tokens):  # already covered (equal or longer entry)
                self._entries.move_to_end(entry_id)
                return True
            if shared == len(entry.tokens):  # strict prefix of the new one
                self._remove(entry_id)
        dtype = layers[0][0].dtype if layers else torch.float32
        packed = tuple((pack(k, self.kv_dtype), pack(v, self.kv_dtype)) for k, v in layers)
        blocks = _storages(packed)
        if copy or sum(blocks.values()) > self.budget_bytes // 2:
            # A row of a batched forward views the whole padded buffer: under a tight budget that
            # buffer would crowd out everything else, or not fit at all, so keep a copy of the row.
            packed = tuple(tuple(tuple(t.clone(memory_format=torch.contiguous_format) for t in part) for part in pair)
                           for pair in packed)
            blocks = _storages(packed)
        if sum(blocks.values()) > self.budget_bytes:
            return False
        self._entries[self._next_id] = _Entry(tokens, packed, dtype, blocks)
        self._next_id += 1
        for pointer, size in blocks.items():
            users = self._block_users.get(pointer, 0)
            self.nbytes += size if users == 0 else 0
            self._block_users[pointer] = users + 1
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)
        self.release(self.nbytes - self.budget_bytes)
        return True

    def release(self, nbytes: int, keep_bytes: int = 0) -> int:
        """Evict entries (least recently used first, the held one last) until nbytes are freed,
        stopping before an eviction would leave less than keep_bytes held; the budget stays as it
        is. Returns the bytes freed."""
        before = self.nbytes
        if nbytes <= 0:
            return 0
        for victim in self._eviction_order():
            if self.nbytes <= before - nbytes or self.nbytes - self._freed_by_removing(victim) < keep_bytes:
                break
            self._remove(victim)
            self.evictions += 1
        return before - self.nbytes

    def held_entry(self) -> np.ndarray | None:
        """The tokens of the entry evicted last (the longest prefix of the held sequence), if any."""
        entry_id = self._held_id()
        return None if entry_id is None else self._entries[entry_id].tokens

    def _held_id(self) -> int | None:
        if self._held is None:
            return None
        best_id, best_length = None, 0
        for entry_id, entry in self._entries.items():  # ties: the most recent
            length = common_prefix_length(entry.tokens, self._held)
            if length >= best_length and length > 0:
                best_id, best_length = entry_id, length
        return best_id

    def _eviction_order(self) -> list[int]:
        held = self._held_id()
        return [e for e in self._entries if e != held] + ([held] if held is not None else [])

    def _freed_by_removing(self, entry_id: int) -> int:
        return sum(size for pointer, size in self._entries[entry_id].storages.items() if self._block_users[pointer] == 1)

    def _remove(self, entry_id: int) -> None:
        for pointer, size in self._entries.pop(entry_id).storages.items():
            self._block_users[pointer] -= 1
            if self._block_users[pointer] == 0:
                del self._block_users[pointer]
                self.nbytes -= size
