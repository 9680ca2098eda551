"""A model shared between runs: each run gets its own handle, and the handles take turns.

The studio's RunManager (runs/manager.py) loads a model once per ModelConfig and gives every run
on it a SharedBackend over the one loaded backend and one lock.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np

from .base import BackendStats, CacheUsage, LanguageModel


class SharedBackend(LanguageModel):
    """One run's handle on a model that several runs share: one call at a time, costs counted per run.

    Backends keep caches that are not thread-safe, and a Search reports each step's cost from
    `backend.stats`, which would otherwise mix the calls of every run on the model.
    """

    def __init__(self, inner: LanguageModel, lock: threading.Lock) -> None:
        self.inner, self._lock = inner, lock
        self.name, self.revision = inner.name, inner.revision
        self.info = inner.info
        self.stats = BackendStats()

    def _counted(self, call: Callable, *args):
        with self._lock:
            before = self.inner.stats.snapshot()
            result = call(*args)
            used = self.inner.stats.since(before)
        self.stats.model_calls += used.model_calls
        self.stats.tokens_forwarded += used.tokens_forwarded
        self.stats.seconds += used.seconds
        self.stats.tokens_reused += used.tokens_reused
        return result

    def label_logprobs(self, queries) -> np.ndarray:
        return self._counted(self.inner.label_logprobs, queries)

    def sequence_label_logprobs(self, segments, read_after: Sequence[int], label_words) -> np.ndarray:
        return self._counted(self.inner.sequence_label_logprobs, segments, read_after, label_words)

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return self.inner.count_tokens(text)

    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def hidden_layer_count(self) -> int:
        return self.inner.hidden_layer_count

    def hidden_states(self, prompts, layers) -> np.ndarray:
        return self._counted(self.inner.hidden_states, prompts, layers)

    def read_label_position(self, prompts, layers, label_words) -> tuple[np.ndarray, np.ndarray]:
        return self._counted(self.inner.read_label_position, prompts, layers, label_words)

    def cache_usage(self) -> CacheUsage | None:
        # Five counters of the one store every run on this model shares, read for display between
        # steps: taking the lock would make this run wait for another run's whole call to read them.
        return self.inner.cache_usage()

    def hold_prefix(self, segments) -> None:
        # the last run to ask wins: runs sharing a model take turns, step by step
        with self._lock:
            self.inner.hold_prefix(segments)

    def naive(self) -> LanguageModel:
        view = self.inner.naive()
        return self if view is self.inner else SharedBackend(view, self._lock)
