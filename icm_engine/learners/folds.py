"""A learner as the scalable search's fold scorer (core.scalable.FoldLearner), over inputs prepared once."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import Learner, Prepared


class PreparedFolds:
    """fit_predict and initial over one prepared dataset: the hidden states are read once, and each
    fold's fit reuses them.

    seed: (indices, labels) of a seed labeling (say, an in-context run over a first batch of the same
    data): the search then starts from a model fit on it, the released code's iterative fine-tuning,
    instead of the untrained model's zero-shot reading.
    """

    def __init__(self, learner: Learner, prepared: Prepared, seed: int = 0,
                 seed_labels: tuple[Sequence[int], Sequence[int]] | None = None, seed_name: str = "") -> None:
        self.learner, self.prepared, self.seed, self.seed_labels = learner, prepared, seed, seed_labels
        self.initial_source = (f"a {learner.kind} fit on the {len(seed_labels[0])} labels of {seed_name or 'a seed run'}"
                               if seed_labels else "the model's own zero-shot reading") + _context_note(prepared)

    def initial(self) -> np.ndarray:
        if self.seed_labels is None:
            return self.learner.zero_shot(self.prepared)
        indices, labels = self.seed_labels
        trained = self.learner.fit(self.prepared, indices, labels, seed=self.seed)
        return trained.label_logprobs(self.prepared, range(len(self.prepared.examples)))

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
        trained = self.learner.fit(self.prepared, train, labels, seed=self.seed)
        return trained.label_logprobs(self.prepared, test)


def _context_note(prepared: Prepared) -> str:
    """Which demonstrations every example was read after (the head's reading context), by example id."""
    context = prepared.extra.get("context") or []
    if not context:
        return ""
    uid_of = {prompt: example.uid for prompt, example in zip(prepared.prompts, prepared.examples)}
    shown = ", ".join(f"{uid_of.get(query, '?')} {'True' if label else 'False'}" for query, label in context)
    return f"; each example read after {len(context)} demonstrations labeled by the model's zero-shot reading ({shown})"
