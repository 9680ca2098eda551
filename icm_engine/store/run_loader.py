"""A stored run with what it runs on: its row, its task and its examples (inputs only, never gold).

Resuming a run, exporting it, reporting on it, the trust checks and the studio all read a run
this way, so "run -> task -> examples" is written once. Gold stays in its own table; whoever
needs it for an audit asks Store.load_gold itself.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..core.tasks import Example, Task, load_task
from .database import Store


@dataclass(frozen=True)
class StoredRun:
    run: dict  # Store.run(run_id): the row, with config and model parsed
    task: Task
    examples: list[Example]


def load_dataset_inputs(store: Store, dataset_id: int) -> tuple[Task, list[Example]]:
    """A stored dataset's task and examples, in load order (the examples' indices)."""
    return load_task(store.dataset_task(dataset_id)), store.load_examples(dataset_id)


def load_run(store: Store, run_id: int) -> StoredRun:
    run = store.run(run_id)
    task, examples = load_dataset_inputs(store, run["dataset_id"])
    return StoredRun(run, task, examples)
