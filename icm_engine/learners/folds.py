"""A learner as the scalable search's fold scorer (core.scalable.FoldLearner), over inputs prepared once."""
from __future__ import annotations

import numpy as np

from .base import Learner, Prepared


class PreparedFolds:
    """fit_predict and zero_shot over one prepared dataset: the hidden states are read once, and
    each fold's fit reuses them."""

    def __init__(self, learner: Learner, prepared: Prepared, seed: int = 0) -> None:
        self.learner, self.prepared, self.seed = learner, prepared, seed

    def zero_shot(self) -> np.ndarray:
        return self.learner.zero_shot(self.prepared)

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
        trained = self.learner.fit(self.prepared, train, labels, seed=self.seed)
        return trained.label_logprobs(self.prepared, test)
