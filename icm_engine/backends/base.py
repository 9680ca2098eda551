"""The one interface every language-model backend implements.

A backend answers a batch of *label queries*: for each prompt, the log-probability of each
label word as the next token. Prompts are given as segments (demonstrations, then the query)
so a backend may reuse computation across prompts that share leading segments; the
token sequence of a prompt is always BOS + tokens(segment_1) + tokens(segment_2) + ...,
each segment tokenized on its own, so cached and uncached paths see identical tokens.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

# How a local backend's prefix store may keep keys/values (kv_cache.py); "compute" is exact, the
# others trade a little accuracy for memory (measured in docs/speed.md, "Storage dtype"). Declared
# here, without torch, so that core/config.py offers the same choices as a setting.
KV_DTYPES = ("compute", "bfloat16", "int8")


@dataclass(frozen=True)
class LabelQuery:
    """One prompt whose next token is scored against the label words."""

    segments: tuple[str, ...]
    label_words: tuple[str, ...]


class HiddenStatesUnavailable(RuntimeError):
    """This backend cannot give hidden states (an inference server's API, a stand-in model); the
    message says why. Whatever needs them (the CCS probe) reports itself unavailable instead."""


def empty_label_rows(n_labels: int = 2) -> np.ndarray:
    """The answer to an empty batch, float64 [0, n_labels]. An empty label_logprobs batch names no
    label words, so it answers for two: every task has two (core.tasks.Task checks it), and the
    scorer's arithmetic on columns 0 and 1 then holds for no rows as for many."""
    return np.zeros((0, n_labels), dtype=np.float64)


@dataclass
class BackendStats:
    """Counters a backend keeps so each search step can report its cost."""

    model_calls: int = 0  # forward passes run
    tokens_forwarded: int = 0  # tokens pushed through the model (cache hits excluded)
    seconds: float = 0.0
    tokens_reused: int = 0  # prompt tokens read from a prefix store instead of forwarded

    def snapshot(self) -> "BackendStats":
        return BackendStats(self.model_calls, self.tokens_forwarded, self.seconds, self.tokens_reused)

    def since(self, earlier: "BackendStats") -> "BackendStats":
        return BackendStats(
            self.model_calls - earlier.model_calls,
            self.tokens_forwarded - earlier.tokens_forwarded,
            self.seconds - earlier.seconds,
            self.tokens_reused - earlier.tokens_reused,
        )

    @property
    def hit_rate(self) -> float | None:
        """Share of prompt tokens the prefix store served (None before any token)."""
        total = self.tokens_reused + self.tokens_forwarded
        return self.tokens_reused / total if total else None


@dataclass(frozen=True)
class CacheUsage:
    """A backend's prefix store as it stands: what the studio's Live page shows beside the hit rate."""

    held_bytes: int
    budget_bytes: int
    peak_bytes: int
    evictions: int
    kv_dtype: str


class LanguageModel(ABC):
    """A pretrained model that scores label words; see the module docstring."""

    name: str = "unnamed"
    revision: str | None = None
    stats: BackendStats

    def cache_usage(self) -> CacheUsage | None:
        """The prefix store's occupancy and budget; None for a backend without one."""
        return None

    @property
    def info(self) -> "ModelInfo":
        """What a run records about this model. Backends that resolved more (device, dtype, the
        server's engine) set it when they load; any other backend is described by name and revision."""
        return getattr(self, "_info", None) or ModelInfo(name=self.name, revision=self.revision)

    @info.setter
    def info(self, value: "ModelInfo") -> None:
        self._info = value

    @abstractmethod
    def label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        """Return float64 [len(queries), n_labels]: log P(first token of each label word | prompt),
        normalized over the whole vocabulary (the caller renormalizes over label words). No queries:
        empty_label_rows(), [0, 2]."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens the text takes as one segment (no BOS)."""

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Most tokens one prompt may hold, BOS included."""

    def sequence_label_logprobs(
        self, segments: tuple[str, ...], read_after: Sequence[int], label_words: tuple[str, ...]
    ) -> np.ndarray:
        """Label log-probs at the position after segment k, for each k in read_after: [len, n_labels].

        Backends that can read many positions from one forward pass override this; the default
        asks one prompt per position, which gives the same numbers.
        """
        queries = [LabelQuery(tuple(segments[: k + 1]), label_words) for k in read_after]
        return self.label_logprobs(queries) if queries else empty_label_rows(len(label_words))

    @property
    def hidden_layer_count(self) -> int:
        """Transformer blocks whose outputs hidden_states() can read (layer 1..this)."""
        raise HiddenStatesUnavailable(f"{self.name} ({type(self).__name__}) gives no hidden states")

    def hidden_states(self, prompts: Sequence[tuple[str, ...]], layers: Sequence[int]) -> np.ndarray:
        """float32 [len(layers), len(prompts), d]: the residual stream at the last token of each prompt
        (segments tokenized as for label queries), after block `layer` for each layer (0: the token
        embeddings). Backends without access to activations raise HiddenStatesUnavailable."""
        raise HiddenStatesUnavailable(f"{self.name} ({type(self).__name__}) gives no hidden states")

    def read_label_position(self, prompts: Sequence[tuple[str, ...]], layers: Sequence[int],
                            label_words: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """What a head learner reads of each prompt: (hidden_states(prompts, layers), label scores [n, n_labels]
        whose differences are the label log-odds: label_logprobs here; a backend that takes both from one
        forward pass may leave out each row's normalizer, which the log-odds do not need)."""
        return self.hidden_states(prompts, layers), self.label_logprobs([LabelQuery(tuple(p), label_words) for p in prompts])

    def naive(self) -> "LanguageModel":
        """The reference view of this model: one independent forward per prompt, nothing cached."""
        return self

    def hold_prefix(self, segments: Sequence[str]) -> None:
        """A hint, not a request: the prompts asked next start with leading parts of `segments`
        (the current demonstration order), so a backend with a bounded prefix cache keeps what
        covers it longest; no segments: nothing to hold. Backends without such a cache ignore
        it; numbers never depend on it."""

    def close(self) -> None:
        """Release memory held by caches or weights; optional."""


@dataclass
class ModelInfo:
    """What a run records about the model it used."""

    name: str
    revision: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    quantization: str = "none"
    extra: dict = field(default_factory=dict)
