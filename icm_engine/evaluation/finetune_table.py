"""The fine-tuning table (the paper's Figure 3, its fine-tuning bars): the same model fine-tuned on
the search split under each method's labels (gold, ICM, zero-shot, self-labeling, random), then
tested on the test split. Rows differ only in the labels trained on: the same examples, the same
learner settings, the same seed.

Which learner made a row is in its "learner" column (head: a logistic head on frozen hidden states
plus the model's own zero-shot reading; lora: LoRA through TRL). The search split's inputs and the
test inputs are each prepared once per learner (the head's hidden states) and reused by every row.
Gold is read only for the gold row's training labels and to score predictions, as in the other tables.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np

from ..backends.base import LanguageModel
from ..core.config import LearnerConfig
from ..core.tasks import Example, Task
from ..runs.finetune import make_learner
from .baselines import Progress, decide

FINETUNE_TABLE = "finetune"

Log = Callable[[str], None]


class FinetuneRows:
    """Fine-tunes and tests one learner per name in `learners` over a fixed split."""

    def __init__(self, backend: LanguageModel, task: Task, search_examples: Sequence[Example],
                 tests: Sequence[Example], test_gold: np.ndarray, learners: Sequence[str], settings: LearnerConfig,
                 decision_rules: Sequence[str], log: Log, progress: Progress | None = None,
                 done: Callable[[], None] = lambda: None) -> None:
        """progress hears each preparation and training under its own name; done() after each
        learner's preparation and each row (the evaluation's jobs)."""
        self.test_gold, self.rules, self.log = test_gold, tuple(decision_rules), log
        self.progress, self.done = progress, done
        self.learners = {}
        for name in learners:
            learner = make_learner(backend, task, replace(settings, learner=name))
            began = time.perf_counter()
            search_prepared = learner.prepare(list(search_examples), self._stage(f"finetune {name}: preparing search split"))
            # the test split is read after the search split's context, as a trained head reads new data
            prepared = (search_prepared, learner.prepare(list(tests), self._stage(f"finetune {name}: preparing test split"),
                                                         context=search_prepared.extra.get("context")))
            log(f"finetune {name}: prepared {len(search_examples)} search and {len(tests)} test inputs "
                f"in {time.perf_counter() - began:.1f} s")
            self.learners[name] = (learner, prepared)
            done()

    def _stage(self, what: str):
        """The learners' progress(done, total, message) under a name of our own (their message is a loss)."""
        if self.progress is None:
            return None
        return lambda done, total, _message: self.progress(done, total, what)

    def rows(self, method: str, seed: int | None, labels: Sequence[int | None], decision: str, **extra) -> list[dict]:
        """One row per learner: trained on the search examples that `labels` labels, tested on the test split."""
        given = [k for k, y in enumerate(labels) if y is not None]
        out = []
        for name, (learner, (search_prepared, test_prepared)) in self.learners.items():
            began = time.perf_counter()
            trained = learner.fit(search_prepared, given, [int(labels[k]) for k in given],
                                  self._stage(f"finetune {name} on {method} (seed {seed})"), seed=seed or 0)
            logp = trained.label_logprobs(test_prepared, range(len(self.test_gold)))
            log_odds = logp[:, 1] - logp[:, 0]
            by_rule = {rule: float(np.mean(decide(log_odds, rule) == self.test_gold)) for rule in self.rules}
            seconds = time.perf_counter() - began
            out.append({"table": FINETUNE_TABLE, "method": method, "seed": seed, "learner": name,
                        "accuracy": by_rule[decision], "n_test": len(self.test_gold), "n_demos": None,
                        "n_train": len(given), "loss_curve": [float(v) for v in trained.loss_curve],
                        "train_seconds": seconds, **{f"accuracy_{rule}": v for rule, v in by_rule.items()}, **extra})
            self.log(f"finetune {name} on {method} labels (seed {seed}): test accuracy {by_rule[decision]:.3f} "
                     f"({decision}) after training on {len(given)} in {seconds:.1f} s")
            self.done()
        return out
