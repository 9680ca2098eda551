"""Batched forwards over prompts whose cached prefixes differ: planning and the batch cache.

A leave-one-out step asks for many prompts that each continue a *different* cached prefix (after
an addition, prompt i continues the stored state of D minus i). One small forward per prompt
wastes the CPU's matrix units on a few dozen rows; one forward for many prompts needs their
prefixes side by side. BatchLayer puts them there: each prompt's prefix is left-padded to the
longest one in a [batch, heads, past + new, dim] tensor, the padding is masked out through the
ordinary 2-D attention mask and every prompt keeps its own true position ids, so each row
computes exactly what its own unbatched forward would (left-padding is how batched generation
works, and relative distances, hence sliding windows, are unchanged by it).

plan_waves decides what may share a batch: a prompt whose best prefix is another prompt of the
same call (a fresh leave-one-out set, the prompts after a relabel) must wait for that one;
prompts whose best prefix is already stored go together.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from transformers.cache_utils import DynamicLayer

from icm_engine.backends.kv_cache import LayerKV, PrefixKVStore, common_prefix_length

# Waiting for a prompt of the same call must save at least this many tokens (over the jobs that
# wait together); below that they go into the earlier batch and recompute them, which is cheaper
# than a lone forward.
MIN_TOKENS_SAVED_BY_WAITING = 48


@dataclass
class Job:
    """One prompt to forward: its tokens and the positions whose outputs are read."""

    index: int  # position in the caller's list
    tokens: np.ndarray
    positions: list[int]
    # Store the states of the first keep_length tokens only (None: all). A label query keeps its
    # demonstrations, not its own query: later prompts continue the demonstrations, while the
    # query ends this prompt alone (with in-context folds, every prompt of a fold shares them).
    keep_length: int | None = None

    @property
    def kept_tokens(self) -> np.ndarray:
        return self.tokens if self.keep_length is None else self.tokens[: self.keep_length]

    @property
    def reuse_limit(self) -> int:
        # At most up to the first position read: its output must be computed in this forward.
        return min(self.positions)


def plan_waves(jobs: Sequence[Job], store: PrefixKVStore, bytes_per_token: int = 0) -> list[list[Job]]:
    """Group jobs into waves run one after another; jobs of one wave are independent.

    Jobs are taken in lexicographic token order (a depth-first walk of their prefix tree), where
    the jobs sharing at least L leading tokens with a job are a run of its neighbours. A job
    waits for the earliest wave among the jobs before it that share its longest common prefix
    (any of them computes and stores it) when waiting saves MIN_TOKENS_SAVED_BY_WAITING tokens
    over the best stored prefix, counted over every job of that run that waits with it
    (the queries of one in-context fold share one prompt: each saves a demonstration, together
    many), and when the store can hold that wave (given bytes_per_token): a state evicted before
    the next wave would leave the waiting job to start from scratch.
    """
    capacity = store.budget_bytes // bytes_per_token if bytes_per_token else float("inf")
    ordered = sorted(jobs, key=lambda job: tuple(job.tokens))
    # shared[k]: leading tokens job k shares with job k - 1; job j < k shares min(shared[j+1..k]) with k
    shared = [0] + [common_prefix_length(a.tokens, b.tokens) for a, b in zip(ordered, ordered[1:])]
    wave_of: list[int] = []
    wave_tokens: list[int] = []
    for k, job in enumerate(ordered):
        wave = 0
        length = min(shared[k], job.reuse_limit) if k else 0
        saves = length - store.match_length(job.tokens, job.reuse_limit) if k else 0
        if saves > 0:
            source, j = wave_of[k - 1], k - 1
            while j > 0 and shared[j] >= length:
                j -= 1
                source = min(source, wave_of[j])
            after = 0
            while k + after + 1 < len(ordered) and shared[k + after + 1] >= length:
                after += 1
            waiting = k - j + after  # the run j..k+after shares `length` tokens; all but one wait
            if saves * waiting >= MIN_TOKENS_SAVED_BY_WAITING and wave_tokens[source] <= capacity:
                wave = source + 1
        wave_of.append(wave)
        wave_tokens += [0] * (wave + 1 - len(wave_tokens))
        wave_tokens[wave] += len(job.tokens)
    waves: list[list[Job]] = [[] for _ in range(max(wave_of, default=-1) + 1)]
    for job, wave in zip(ordered, wave_of):
        waves[wave].append(job)
    return waves


def split_batches(jobs: Sequence[Job], pasts: Sequence[int], bytes_per_token: int, max_bytes: int,
                  max_rows: int) -> list[list[int]]:
    """Split a wave into batches (lists of indices into jobs) whose padded key/value buffer stays
    under max_bytes. Jobs are taken shortest new part first, so that rows padded together to the
    longest new part of their batch waste little."""
    batches: list[list[int]] = []
    current: list[int] = []
    longest_past = longest_new = 0
    for k in sorted(range(len(jobs)), key=lambda k: len(jobs[k].tokens) - pasts[k]):
        past, new = pasts[k], len(jobs[k].tokens) - pasts[k]
        grown_past, grown_new = max(longest_past, past), max(longest_new, new)
        size = (len(current) + 1) * (grown_past + grown_new) * bytes_per_token
        if current and (size > max_bytes or len(current) >= max_rows):
            batches.append(current)
            current, grown_past, grown_new = [], past, new
        current.append(k)
        longest_past, longest_new = grown_past, grown_new
    if current:
        batches.append(current)
    return batches


class BatchLayer(DynamicLayer):
    """A full-attention cache layer for one batched forward: rows' pasts left-padded to one length.

    The new tokens may come in several chunks (one model call each, see chunk_spans). The buffer
    for pasts and all new tokens is allocated on the first update, when the keys' shape is known,
    so pasts are copied once, straight into place, and each chunk is written after the last.
    """

    def __init__(self, pasts: Sequence[LayerKV | None], past_length: int, sliding_window: int | None,
                 new_length: int):
        super().__init__()
        self._pasts = list(pasts)
        self._length = past_length
        self._capacity = past_length + new_length
        self.is_initialized = True
        # A sliding-window layer attends only to the last window-1 keys before the chunk's first
        # token (the same for every row: all rows' new tokens start at the same padded index),
        # so the forward is handed those alone; the stored states stay full (see kv_cache).
        self.is_sliding = sliding_window is not None
        self._window = sliding_window

    def get_seq_length(self) -> int:
        return self._length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self._window is not None and self._length >= self._window:
            return self._window - 1 + query_length, self._length - self._window + 1
        return self._length + query_length, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if self._length + new > self._capacity:
            raise RuntimeError("BatchLayer was given more new tokens than it was built for")
        if self._pasts is not None:
            self._allocate(key_states, value_states)
        visible_from = self.get_mask_sizes(new)[1]
        end = self._length + new
        self._buffer_keys[:, :, self._length : end] = key_states
        self._buffer_values[:, :, self._length : end] = value_states
        self._length = end
        self.keys, self.values = self._buffer_keys[:, :, :end], self._buffer_values[:, :, :end]
        return self.keys[:, :, visible_from:], self.values[:, :, visible_from:]

    def _allocate(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        past_length = self._length
        keys = key_states.new_empty((batch, heads, self._capacity, dim))
        values = value_states.new_empty((batch, heads, self._capacity, dim))
        for row, past in enumerate(self._pasts):
            length = 0 if past is None else past[0].shape[-2]
            if length:
                keys[row, :, past_length - length : past_length] = past[0][0]
                values[row, :, past_length - length : past_length] = past[1][0]
            # Padding is masked out, but a NaN in garbage memory would still poison the softmax.
            keys[row, :, : past_length - length] = 0
            values[row, :, : past_length - length] = 0
        self._buffer_keys, self._buffer_values, self._pasts = keys, values, None


def chunk_spans(width: int, windows: Sequence[int | None]) -> list[tuple[int, int]]:
    """Split a batch's new tokens into chunks of the smallest sliding window, one forward each.

    Attention with a mask computes every query against every key it is handed, masked or not.
    In one forward of W new tokens a sliding-window layer is handed window-1+W keys per query;
    in chunks of the window it is handed at most 2*window-1, and full layers skip the upper
    triangle of the chunks after. The result is the same: attention is causal either way.
    Models without sliding windows run in one forward.
    """
    sliding = [w for w in windows if w is not None]
    chunk = min(sliding) if sliding else width
    return [(start, min(start + chunk, width)) for start in range(0, width, max(chunk, 1))]


def sliding_windows(config) -> list[int | None]:
    """Each layer's attention window, or None for full attention. Only configs that name their
    layer types (Gemma 2/3 and the like) are trimmed; any other model gets full layers, which
    stay exact because the model masks by its own rules."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not layer_types or not isinstance(window, int) or window < 1:
        return [None] * config.num_hidden_layers
    return [window if kind == "sliding_attention" else None for kind in layer_types]


def batch_cache(pasts: Sequence[Sequence[LayerKV] | None], past_length: int, windows: Sequence[int | None],
                new_length: int):
    """A DynamicCache of BatchLayers: one per model layer, each over every row's past of that layer,
    with room for new_length new tokens (given in one forward or in chunks)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, window in enumerate(windows):
        cache.layers.append(BatchLayer([None if p is None else p[layer] for p in pasts], past_length, window, new_length))
    return cache
