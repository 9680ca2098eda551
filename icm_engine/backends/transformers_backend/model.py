"""TransformersLM: a loaded transformers causal LM behind the LanguageModel interface.

This class holds the state: the model and tokenizer, the prefix store, the stats and the lock,
and turns text into tokens. What it does with them lives beside it, one concern a file:
scoring (label log-probs, naive and prefix-cached), hidden_states (the CCS probe's and the head
learner's readings), memory (the store's budget and the batch sizes), throughput (`icm bench`),
and device (CUDA's attention kernels and timing).
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

import numpy as np
import torch

from icm_engine.backends.base import BackendStats, CacheUsage, LanguageModel, ModelInfo
from icm_engine.backends.kv_cache import PrefixKVStore
from icm_engine.backends.prefix_batches import sliding_windows

from . import memory
from .device import synchronize
from .hidden_states import HiddenStates
from .scoring import Scoring
from .throughput import forward_tokens_per_second

_MAX_TOKENIZED_SEGMENTS = 200_000  # bound on the per-segment tokenization memo


class TransformersLM(Scoring, HiddenStates, LanguageModel):
    """Scores label words with a loaded transformers causal LM; see the package docstring."""

    def __init__(
        self,
        model,
        tokenizer,
        info: ModelInfo,
        max_context: int | None = None,
        cache_budget_mb: float | None = None,
        prefix_cache: bool = True,
        kv_dtype: str = "compute",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.info = info
        self.name = info.name
        self.revision = info.revision
        self.stats = BackendStats()
        self._max_context = max_context
        self._text_config = model.config.get_text_config()
        self._bos_id = tokenizer.bos_token_id
        self._segment_tokens: dict[str, tuple[int, ...]] = {}
        self._label_token_ids: dict[tuple[str, ...], tuple[int, ...]] = {}
        self._lock = threading.RLock()  # one forward at a time: the store and stats are shared state
        self._deferred_head_ok: bool | None = None  # decided by a probe on first fast use
        self._windows = sliding_windows(self._text_config)
        if prefix_cache:
            budget_bytes = memory.cache_budget_bytes(self.device, cache_budget_mb)
            self._store: PrefixKVStore | None = PrefixKVStore(budget_bytes, kv_dtype)
        else:
            self._store = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def uses_prefix_cache(self) -> bool:
        return self._store is not None

    @property
    def cache_store(self) -> PrefixKVStore | None:
        """The prefix store (None in naive mode); exposed for inspection and tests."""
        return self._store

    @property
    def context_window(self) -> int:
        model_limit = getattr(self._text_config, "max_position_embeddings", None) or 2**31
        return min(model_limit, self._max_context) if self._max_context else model_limit

    def naive(self) -> "TransformersLM":
        """The reference scorer on the same weights: one uncached forward per query. It keeps
        its own stats, so a comparison can report both costs."""
        return TransformersLM(self.model, self.tokenizer, self.info, self._max_context, prefix_cache=False)

    def with_kv_dtype(self, kv_dtype: str) -> "TransformersLM":
        """The fast scorer on the same weights with its own store, of the same budget, keeping keys
        and values in kv_dtype (`icm bench --kv-dtypes` compares them in one process)."""
        budget_mb = (self._store.budget_bytes if self._store is not None else memory.default_budget_bytes(self.device)) / 2**20
        return TransformersLM(self.model, self.tokenizer, self.info, self._max_context, cache_budget_mb=budget_mb,
                              kv_dtype=kv_dtype)

    def hold_prefix(self, segments: Sequence[str]) -> None:
        """The store evicts last the entry covering the longest prefix of these segments (see
        LanguageModel.hold_prefix); a sequence over the context window is held as far as it goes."""
        if self._store is None:
            return
        pieces = [] if self._bos_id is None else [self._bos_id]
        for segment in segments:
            pieces.extend(self._tokenize_segment(segment))
        with self._lock:
            self._store.hold(np.asarray(pieces[: self.context_window], dtype=np.int64) if segments else None)

    def cache_usage(self) -> CacheUsage | None:
        store = self._store
        if store is None:
            return None
        return CacheUsage(held_bytes=store.nbytes, budget_bytes=store.budget_bytes, peak_bytes=store.peak_nbytes,
                          evictions=store.evictions, kv_dtype=store.kv_dtype)

    def clear_cache(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.clear()

    def close(self) -> None:
        self.clear_cache()
        self._segment_tokens.clear()

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize_segment(text))

    def label_token_ids(self, label_words: tuple[str, ...]) -> tuple[int, ...]:
        """First token of each label word; raises ValueError when two words share it."""
        label_words = tuple(label_words)
        if label_words in self._label_token_ids:
            return self._label_token_ids[label_words]
        if not label_words:
            raise ValueError("at least one label word is needed")
        ids = []
        for word in label_words:
            tokens = self._tokenize_segment(word)
            if not tokens:
                raise ValueError(f"label word {word!r} tokenizes to nothing")
            ids.append(tokens[0])
        if len(set(ids)) != len(ids):
            shown = ", ".join(
                f"{word!r} -> {self.tokenizer.convert_ids_to_tokens(i)!r}" for word, i in zip(label_words, ids)
            )
            raise ValueError(
                f"label words must start with different tokens, but their first tokens collide: {shown}. "
                "Pick label words that differ in their first token (e.g. ' True' / ' False', with the space)."
            )
        self._label_token_ids[label_words] = tuple(ids)
        return tuple(ids)

    def raw_throughput(self, n_tokens: int = 1024) -> float:
        """Tokens per second of one uncached forward over n_tokens random tokens (a benchmark;
        not counted in stats)."""
        with self._lock:
            return forward_tokens_per_second(self.model, max(2, min(n_tokens, self.context_window)))

    # ----- tokens -----

    @property
    def _bos_length(self) -> int:
        return 0 if self._bos_id is None else 1

    def _tokenize_segment(self, text: str) -> tuple[int, ...]:
        tokens = self._segment_tokens.get(text)
        if tokens is None:
            tokens = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if len(self._segment_tokens) >= _MAX_TOKENIZED_SEGMENTS:
                self._segment_tokens.clear()
            self._segment_tokens[text] = tokens
        return tokens

    def _prompt_tokens(self, segments: Sequence[str]) -> np.ndarray:
        """BOS + each segment tokenized on its own; checked against the context window."""
        pieces = [] if self._bos_id is None else [self._bos_id]
        for segment in segments:
            pieces.extend(self._tokenize_segment(segment))
        if not pieces:
            raise ValueError("the prompt is empty (no BOS token and no segment tokens)")
        if len(pieces) > self.context_window:
            raise ValueError(
                f"prompt of {len(pieces)} tokens exceeds the context window of {self.context_window} tokens"
            )
        return np.asarray(pieces, dtype=np.int64)

    # ----- bookkeeping -----

    def _count(self, n_tokens: int, start: float, reused: int = 0) -> None:
        synchronize(self.device)  # a GPU's queued work belongs to this forward's time
        self.stats.model_calls += 1
        self.stats.tokens_forwarded += n_tokens
        self.stats.tokens_reused += reused
        self.stats.seconds += time.perf_counter() - start
