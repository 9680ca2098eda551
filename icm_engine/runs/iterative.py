"""Iterative fine-tuning over a batched run, the released code's way (`icm finetune --iterative`).

Round j (j = 1..B-1) fits the learner on the labels of batches 1..j and labels batch j+1 with it:
batch 1's labels are its ICM run's, each later batch's are the previous round's model's. The last
round's model (trained on batches 1..B-1) is saved like any fine-tune, its provenance naming each
round: the batches trained on, how many examples, and where batch j+1 had ICM labels of its own,
how often the model's labels agree with them. Gold is never read; the ICM labels of batches 2..B
are only compared with, never trained on.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..backends.base import LanguageModel
from ..core.config import LearnerConfig
from ..core.tasks import Example, Task
from ..learners.base import TrainProgress
from ..learners.saved import finetuned_root, read_provenance, save_trained
from ..store.database import Store
from ..store.run_loader import load_run
from .batches import BatchError, is_batched, members
from .finetune import make_learner


@dataclass(frozen=True)
class BatchedLabels:
    """What iterative fine-tuning reads of a batched run, read once (the database is closed before training)."""

    run_id: int
    dataset_id: int
    task: Task
    examples: list[Example]  # the whole dataset, by index
    batches: list[tuple[int, ...]]  # each batch run's members, in batch order
    batch_runs: list[int]
    icm: list[dict[int, int]]  # each batch run's labels of its members (empty where it has none yet)
    model_config: dict


def batched_labels(store: Store, run_id: int) -> BatchedLabels:
    """A batched run's batches and their ICM labels; refused (BatchError) where there is nothing to iterate."""
    stored = load_run(store, run_id)
    if not is_batched(stored.run["config"]):
        raise BatchError(f"run {run_id} is not a batched run (icm run --batch-size N makes one): --iterative labels "
                         "its batches one after another")
    children = store.child_runs(run_id)
    if len(children) < 2:
        raise BatchError(f"run {run_id} has {len(children)} batch run(s): iterating needs two or more")
    batches = [members(store, child) for child in children]
    icm = []
    for child, own in zip(children, batches):
        table = store.labels(child)
        icm.append({int(e): int(y) for e, y in zip(table["example"], table["label"]) if int(e) in set(own)})
    if not icm[0]:
        raise BatchError(f"run {run_id}'s first batch (run {children[0]}) has no labels yet: run it first "
                         f"(icm run --resume {run_id})")
    return BatchedLabels(run_id, int(stored.run["dataset_id"]), stored.task, stored.examples, batches, children, icm,
                         stored.run["config"].get("model", {}))


def iterative_finetune(db_path: str | os.PathLike, source: BatchedLabels, backend: LanguageModel,
                       config: LearnerConfig, progress: TrainProgress | None = None,
                       on_round: Callable[[dict], None] | None = None, seed: int = 0) -> tuple[dict, dict]:
    """Run the rounds (module docstring); save the last round's model beside the database. Returns
    (its provenance, the iterative labeling): labeling maps each example of the batches to
    (label, source, P(True)) where source is "icm" for batch 1 and "round j" for the model that labeled it."""
    started = time.perf_counter()
    learner = make_learner(backend, source.task, config)
    order = [i for batch in source.batches for i in batch]
    row = {i: k for k, i in enumerate(order)}  # dataset index -> row of the prepared inputs
    prepared = learner.prepare([source.examples[i] for i in order], progress)
    labels = dict(source.icm[0])
    labeling = {i: (y, "icm", None) for i, y in labels.items()}
    rounds, trained = [], None
    for j in range(1, len(source.batches)):
        train = sorted(labels)
        trained = learner.fit(prepared, [row[i] for i in train], [labels[i] for i in train], progress, seed=seed)
        target = list(source.batches[j])
        logp = trained.label_logprobs(prepared, [row[i] for i in target])
        predicted = logp.argmax(axis=1)
        for i, y, p in zip(target, predicted, np.exp(logp[:, 1])):
            labels[i] = int(y)
            labeling[i] = (int(y), f"round {j}", float(p))
        icm = source.icm[j]
        compared = [i for i in target if i in icm]
        agreement = float(np.mean([labels[i] == icm[i] for i in compared])) if compared else None
        rounds.append({"round": j, "trained_on_batches": list(range(1, j + 1)),
                       "trained_on_runs": source.batch_runs[:j], "n_train": len(train),
                       "n_train_true": int(sum(labels[i] for i in train)), "labeled_batch": j + 1,
                       "labeled_run": source.batch_runs[j], "n_labeled": len(target),
                       "n_labeled_true": int(predicted.sum()), "icm_agreement": agreement, "n_icm": len(compared),
                       "final_loss": float(trained.loss_curve[-1]) if trained.loss_curve else None})
        if on_round is not None:
            on_round(rounds[-1])
    final_train = sorted(i for batch in source.batches[:-1] for i in batch if i in labels)
    fitted = trained.label_logprobs(prepared, [row[i] for i in final_train]).argmax(axis=1)
    provenance = {
        "db": str(Path(db_path).resolve()), "run_id": source.run_id, "dataset_id": source.dataset_id,
        "task": source.task.to_dict(), "model": asdict(backend.info), "learner": asdict(config), "seed": seed,
        "iterative": True, "rounds": rounds, "n_labels": len(final_train),
        "n_true": int(sum(labels[i] for i in final_train)), "seconds": round(time.perf_counter() - started, 2),
        "train_accuracy": float(np.mean(fitted == np.asarray([labels[i] for i in final_train]))),
    }
    root = finetuned_root(db_path)
    model_id = save_trained(root, trained, provenance, [source.examples[i].uid for i in final_train],
                            [labels[i] for i in final_train])
    return read_provenance(root, model_id), labeling
