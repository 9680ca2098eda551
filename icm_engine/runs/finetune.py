"""Fine-tune on a run's labels and label new data with the result: the learners (learners/) wired to
the store and the model a run names. `icm finetune`, `icm predict`, the Export page and `icm eval`'s
fine-tuning rows all come through here."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..backends.base import LanguageModel
from ..core.config import LearnerConfig
from ..core.tasks import Example, Task
from ..learners.base import Learner, TrainProgress
from ..learners.saved import finetuned_root, list_trained, read_provenance, save_trained
from ..store.database import Store
from ..store.run_loader import load_run


def make_learner(backend: LanguageModel, task: Task, config: LearnerConfig) -> Learner:
    if config.learner == "head":
        from ..learners.head import HeadLearner

        return HeadLearner(backend, task, config)
    from ..learners.lora import LoraLearner

    # LoRA trains a copy of the weights themselves: the studio's shared, locked handle on a model
    # (backends.shared.SharedBackend) hands over the model it wraps.
    return LoraLearner(getattr(backend, "inner", backend), task, config)


@dataclass(frozen=True)
class LabelSource:
    """What a fine-tune trains on: a run's labeled examples, read once (the database is closed
    before training starts, so the studio can keep using it)."""

    run_id: int | None
    dataset_id: int | None
    task: Task
    examples: list[Example]  # the labeled ones, in the run's demonstration order
    labels: list[int]
    model_config: dict


def run_labels(store: Store, run_id: int) -> LabelSource:
    """A run's labeled examples and labels (what an export holds)."""
    stored = load_run(store, run_id)
    table = store.labels(run_id)
    if table.empty:
        raise ValueError(f"run {run_id} has no labels yet: run its search first")
    indices = table["example"].astype(int).tolist()
    return LabelSource(run_id, int(stored.run["dataset_id"]), stored.task, [stored.examples[i] for i in indices],
                       table["label"].astype(int).tolist(), stored.run["config"].get("model", {}))


def finetune(db_path: str | os.PathLike, source: LabelSource, backend: LanguageModel, config: LearnerConfig,
             progress: TrainProgress | None = None, seed: int = 0) -> dict:
    """Train `config`'s learner on `source`'s labels; saved beside the database. Returns its provenance."""
    learner = make_learner(backend, source.task, config)
    started = time.perf_counter()
    prepared = learner.prepare(source.examples, progress)
    every = range(len(source.labels))
    trained = learner.fit(prepared, every, source.labels, progress, seed=seed)
    seconds = time.perf_counter() - started
    predicted = trained.label_logprobs(prepared, every).argmax(axis=1)
    provenance = {
        "db": str(Path(db_path).resolve()), "run_id": source.run_id, "dataset_id": source.dataset_id,
        "task": source.task.to_dict(), "model": asdict(backend.info), "learner": asdict(config), "seed": seed,
        "n_labels": len(source.labels), "n_true": int(sum(source.labels)), "seconds": round(seconds, 2),
        "train_accuracy": float(np.mean(predicted == np.asarray(source.labels))),
    }
    root = finetuned_root(db_path)
    model_id = save_trained(root, trained, provenance, [e.uid for e in source.examples], source.labels)
    return read_provenance(root, model_id)


def load_finetuned(db_path: str | os.PathLike, model_id: str, backend: LanguageModel):
    """(provenance, task, learner, trained) of a saved fine-tuned model, on `backend` (its base model)."""
    root = finetuned_root(db_path)
    provenance = read_provenance(root, model_id)
    task = Task.from_dict(provenance["task"])
    config = LearnerConfig(**provenance["learner"])
    learner = make_learner(backend, task, config)
    return provenance, task, learner, learner.load(root / model_id, provenance)


def predict(db_path, model_id: str, backend: LanguageModel, examples: Sequence[Example],
            progress: TrainProgress | None = None) -> tuple[list[int], np.ndarray]:
    """Labels (argmax) and P(True) of `examples` from a saved fine-tuned model."""
    _, _, learner, trained = load_finetuned(db_path, model_id, backend)
    prepared = learner.prepare(list(examples), progress, context=trained.context)
    logp = trained.label_logprobs(prepared, range(len(examples)))
    return logp.argmax(axis=1).tolist(), np.exp(logp[:, 1])


def finetuned_models(db_path: str | os.PathLike) -> list[dict]:
    return list_trained(finetuned_root(db_path))
