"""The one interface of everything that fine-tunes on labels: a learner turns labeled prompts into
a trained model that gives label log-probabilities for other prompts.

Two stages, so the scalable search can fit one model per fold without redoing shared work:
`prepare(examples)` does what depends on the inputs only (the head's frozen hidden states, once per
dataset); `fit(prepared, indices, labels)` trains on those rows and returns a `Trained` whose
`label_logprobs(prepared, indices)` answers for any rows. A Trained saves itself into a folder
and `load_trained` (learners/saved.py) reads it back to the same predictions.

Learners read inputs through the task's prompt (the zero-shot query the in-context search also
asks), never gold.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..core.tasks import Example, Task

# progress(done, total, message): training reports after each step; the CLI draws a bar with an
# ETA from it, the studio a progress bar.
TrainProgress = Callable[[int, int, str], None]


@dataclass
class Prepared:
    """What a learner computed from a dataset's inputs (indexed like the examples)."""

    examples: Sequence[Example]
    prompts: list[str]  # each example's zero-shot query, as the search renders it
    features: np.ndarray | None = None  # head: float32 [n, d] hidden states
    prior: np.ndarray | None = None  # head: float64 [n] the model's own zero-shot log-odds (True - False)
    extra: dict = field(default_factory=dict)


class Trained(ABC):
    """A model fine-tuned on labels."""

    kind: str
    loss_curve: list[float]  # training loss after each optimizer step (head: each Newton step)
    context: list[tuple[str, int]] = []  # demonstrations it reads each example after (the head's; prepare with them)

    @abstractmethod
    def label_logprobs(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        """Raw label log-probs [len(indices), 2] (log P(False), log P(True)), normalized over the two."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write what reloads this model into `folder` (created by the caller)."""


class Learner(ABC):
    """Fine-tunes on labels; see the module docstring."""

    kind: str

    def __init__(self, task: Task) -> None:
        self.task = task

    def prompts(self, examples: Sequence[Example]) -> list[str]:
        return [self.task.render_query(e) for e in examples]

    @abstractmethod
    def prepare(self, examples: Sequence[Example], progress: TrainProgress | None = None,
                context: Sequence[tuple[str, int]] | None = None) -> Prepared:
        """context: the (query, label) demonstrations to read each example after, for learners that read
        in context (the head): None lets the learner choose from `examples`; a trained model's `context`
        reads new data as it was trained."""

    @abstractmethod
    def fit(self, prepared: Prepared, indices: Sequence[int], labels: Sequence[int],
            progress: TrainProgress | None = None, seed: int = 0) -> Trained:
        ...

    @abstractmethod
    def zero_shot(self, prepared: Prepared) -> np.ndarray:
        """Raw label log-probs [n, 2] of the untrained model for every prepared example."""

    @abstractmethod
    def load(self, folder: Path, meta: dict[str, Any]) -> Trained:
        """A Trained saved by Trained.save, on this learner's model."""


def check_labels(indices: Sequence[int], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    indices, labels = np.asarray(indices, dtype=int), np.asarray(labels, dtype=int)
    if len(indices) != len(labels):
        raise ValueError(f"{len(indices)} examples but {len(labels)} labels")
    if len(indices) == 0:
        raise ValueError("nothing to train on: no labeled examples")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return indices, labels


def log_softmax_pair(log_odds: np.ndarray) -> np.ndarray:
    """[n] log-odds of True -> [n, 2] (log P(False), log P(True))."""
    log_odds = np.asarray(log_odds, dtype=np.float64)
    return np.stack([-np.logaddexp(0.0, log_odds), -np.logaddexp(0.0, -log_odds)], axis=1)
