"""Cheap ways to label a dataset with the same model, that every ICM result should beat.

- zero-shot: ask the model once per example, no demonstrations;
- iterated self-labeling: label everything zero-shot, then relabel each example with all the
  others (carrying the previous round's labels) as demonstrations, for a few rounds;
- random labels: a fair coin per example, the floor.

Each labeler sees only inputs, never gold, and decides with one of comparison.DECISION_RULES.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..backends.base import LabelQuery, LanguageModel
from ..core.scoring import Scorer, normalize
from ..core.tasks import Example, Task

SELF_LABEL_ROUNDS = 2  # rounds of relabeling after the zero-shot start; most labels settle in one or two
PREDICT_BATCH = 64  # queries per backend call: small enough to print progress, large enough to batch

Log = Callable[[str], None]
Progress = Callable[[int, int, str], None]  # progress(done, total, what), as the learners' TrainProgress


def decide(log_odds: np.ndarray, decision: str) -> np.ndarray:
    """A decision rule applied to one set of log-odds: int array of 0/1.

    centered: subtract the mean log-odds over the set (no gold), so a model's lean toward one
    label word does not decide; argmax: the sign of the raw log-odds (a tie goes to label 0).
    """
    if decision == "centered":
        log_odds = log_odds - (log_odds.mean() if len(log_odds) else 0.0)
    elif decision != "argmax":
        raise ValueError(f"unknown decision {decision!r}")
    return (log_odds > 0).astype(int)


def label_log_odds(backend: LanguageModel, task: Task, prefix: tuple[str, ...], queries: Sequence[Example],
                   log: Log | None = None, what: str = "", progress: Progress | None = None) -> np.ndarray:
    """log P(label 1) - log P(label 0) for each query after `prefix`: float array [len(queries)].
    progress, if given, hears the queries done under `what` after each batch (log lines otherwise)."""
    odds = []
    if progress is not None:
        progress(0, len(queries), what or "queries")
    for start in range(0, len(queries), PREDICT_BATCH):
        chunk = queries[start : start + PREDICT_BATCH]
        batch = [LabelQuery(prefix + (task.render_query(e),), task.label_words) for e in chunk]
        logp = normalize(backend.label_logprobs(batch), "none")
        odds.append(logp[:, 1] - logp[:, 0])
        if progress is not None:
            progress(min(start + PREDICT_BATCH, len(queries)), len(queries), what or "queries")
        elif log is not None and len(queries) > PREDICT_BATCH:
            log(f"  {what}: {min(start + PREDICT_BATCH, len(queries))}/{len(queries)} queries")
    return np.concatenate(odds) if odds else np.zeros(0)


def zero_shot_labels(backend: LanguageModel, task: Task, examples: Sequence[Example], decision: str,
                     log: Log | None = None, progress: Progress | None = None) -> tuple[list[int], np.ndarray]:
    """Each example's label from its query alone; returns (labels, log-odds)."""
    odds = label_log_odds(backend, task, (), examples, log, "zero-shot labels", progress)
    return decide(odds, decision).tolist(), odds


def relabel_round(scorer: Scorer, labels: Sequence[int], decision: str) -> list[int]:
    """One self-labeling round: each example's label decided from its query with all the others,
    carrying `labels`, as demonstrations. `scorer` holds the examples, uncalibrated, no consistency."""
    order = list(range(len(labels)))
    evaluation = scorer.evaluate(order, {i: int(y) for i, y in enumerate(labels)})
    logp = normalize(np.stack([evaluation.raw[i] for i in order]), "none")
    return decide(logp[:, 1] - logp[:, 0], decision).tolist()


def self_labels(backend: LanguageModel, task: Task, examples: Sequence[Example], decision: str,
                rounds: int = SELF_LABEL_ROUNDS, log: Log | None = None,
                progress: Progress | None = None) -> tuple[list[int], int]:
    """Iterated self-labeling; returns (labels, rounds run). Stops early when a round changes nothing.

    Each round scores every example with all the others as demonstrations (the leave-one-out
    prompts of ICM's own score, in dataset order), so it costs what one ICM evaluation of the
    whole set costs.
    """
    labels, _ = zero_shot_labels(backend, task, examples, decision, log, progress)
    scorer = Scorer(backend, task, list(examples), calibration="none", use_consistency=False)
    done = 0
    if progress is not None:
        progress(0, rounds, "self-labeling rounds")
    for done in range(1, rounds + 1):
        relabeled = relabel_round(scorer, labels, decision)
        changed = sum(a != b for a, b in zip(labels, relabeled))
        if log is not None:
            log(f"  self-labeling round {done}: {changed} of {len(labels)} labels changed")
        if progress is not None:  # a round that changes nothing ends it early
            progress(rounds if not changed else done, rounds, "self-labeling rounds")
        labels = relabeled
        if not changed:
            break
    return labels, done


def random_labels(count: int, seed: int) -> list[int]:
    """A fair coin per example, seeded."""
    return np.random.default_rng([seed, 3]).integers(0, 2, size=count).tolist()
