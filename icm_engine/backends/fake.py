"""A deterministic stand-in language model for tests and demos that need no weights.

It "understands" one concept, word polarity: a query's evidence is the count of positive minus
negative words in its last segment. It also learns in context: if the demonstrations' labels
agree with the evidence, it trusts it; if they contradict it, it follows the demonstrations.
So mutual predictability rewards labels that follow polarity either way round, like a real model.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .base import BackendStats, LabelQuery, LanguageModel

POSITIVE = {"good", "great", "love", "excellent", "tasty", "friendly", "amazing", "best", "nice", "happy"}
NEGATIVE = {"bad", "awful", "hate", "terrible", "bland", "rude", "worst", "slow", "dirty", "sad"}
_WORD = re.compile(r"[a-z']+")


def polarity(text: str) -> int:
    words = _WORD.findall(text.lower())
    sign = -1 if "claim: negative" in text.lower() else 1
    return sign * (sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))


class FakeLM(LanguageModel):
    def __init__(self, strength: float = 2.0, bias: float = 0.0, context_window: int = 100_000) -> None:
        self.name = "fake-polarity"
        self.revision = "1"
        self.strength = strength
        self.bias = bias  # added to the True logit: a model's standing preference for one label word
        self._context_window = context_window
        self.stats = BackendStats()

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 1

    def _one(self, query: LabelQuery) -> np.ndarray:
        segments = query.segments
        evidence = np.tanh(polarity(segments[-1]))
        agreement = []
        for q, label in zip(segments[:-1:2], segments[1:-1:2]):
            said_true = label.startswith(query.label_words[1])
            concept = np.sign(polarity(q))
            if concept:
                agreement.append(concept * (1 if said_true else -1))
        trust = float(np.mean(agreement)) if agreement else 1.0
        logit_true = self.strength * evidence * trust + self.bias
        logits = np.array([0.0, logit_true, 1.0])  # the third stands for the rest of the vocabulary
        logp = logits - np.log(np.exp(logits).sum())
        return logp[:2]

    def label_logprobs(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        self.stats.model_calls += len(queries)
        self.stats.tokens_forwarded += sum(1 + sum(self.count_tokens(s) for s in q.segments) for q in queries)
        return np.array([self._one(q) for q in queries], dtype=np.float64).reshape(len(queries), 2)
