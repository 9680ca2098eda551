"""Glue between a Search and the Store: create runs, advance them step by step, resume them.

Every step is written to the store in one transaction together with the state needed to
continue, so a killed process loses at most the step in flight; `open_search` rebuilds the
search from the last committed step. The CLI and the app's background worker both use this.
"""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Callable

from ..backends.base import LanguageModel
from ..core.config import RunConfig
from ..core.errors import InputError
from ..core.records import StepRecord
from ..core.scoring import Scorer
from ..core.scalable import ScalableSearch
from ..core.search import Search
from ..learners.base import TrainProgress
from ..learners.folds import PreparedFolds
from ..store.database import Store, StoreError
from ..store.run_loader import load_run


class BatchedRunError(InputError, ValueError):
    """A batched run's own search was asked for: its batch runs search (runs/batches.py)."""


def create_run(store: Store, dataset_id: int, config: RunConfig, backend: LanguageModel, name: str = "") -> int:
    return store.create_run(dataset_id, config.to_dict(), asdict(backend.info), name=name)


def make_scorer(backend: LanguageModel, task, examples, config: RunConfig) -> Scorer:
    search = config.search
    return Scorer(
        backend.naive() if search.scorer == "naive" else backend,
        task,
        examples,
        calibration=search.calibration,
        use_consistency=search.use_consistency,
        objective=search.objective,
        mode="prequential" if search.scorer == "prequential" else "exact",
        # the prequential scorer reads D as one prompt; a scalable run scores by its learner's folds
        folds=search.icl_folds if search.scorer != "prequential" and search.algorithm == "icl" else 0,
    )


def open_search(store: Store, run_id: int, backend: LanguageModel, steps: int | None = None,
                from_start: bool = False, progress: TrainProgress | None = None) -> Search | ScalableSearch:
    """The run's search at its last committed step (from_start: as before its first event, for a
    replay); `steps` may extend the run's step budget. A scalable run reads its examples' hidden
    states first (`progress` reports it)."""
    stored = load_run(store, run_id)  # inputs only: gold stays in its own table and never reaches the search
    config = RunConfig.from_dict(stored.run["config"])
    if config.search.batch_size:
        raise BatchedRunError(f"run {run_id} is a batched run: its batch runs search (icm run --resume {run_id} runs them "
                         f"in order; each one can be opened on its own)")
    if steps is not None:
        config = replace(config, search=replace(config.search, steps=steps))
    snapshot = None if from_start else store.load_snapshot(run_id)
    if config.search.algorithm == "scalable":
        seed = seed_labels(store, config.search.init_run, stored.examples) if config.search.init_run else None
        return open_scalable(backend, stored.task, stored.examples, config, snapshot, progress, seed,
                             f"run {config.search.init_run}")
    scorer = make_scorer(backend, stored.task, stored.examples, config)
    scorer.check_fits(config.members)  # an example no prompt can hold: say which, before any step
    # a batch run sees its members only: every other example is excluded from the start
    outside = () if config.members is None else set(range(len(stored.examples))) - set(config.members)
    return Search(scorer, config.search, snapshot, excluded=outside)


def seed_labels(store: Store, run_id: int, examples) -> tuple[list[int], list[int]]:
    """Run `run_id`'s labels on `examples`, matched by example id: (indices, labels) of the seed
    labeling a scalable run starts from (say, an in-context run over a first batch of the same data)."""
    position = {e.uid: k for k, e in enumerate(examples)}
    store.run(run_id)  # an unknown run: its one-line error, not an empty match
    table = store.labels(run_id)
    matched = [(position[uid], int(y)) for uid, y in zip(table["uid"], table["label"]) if uid in position]
    if not matched:
        raise ValueError(f"run {run_id} labels none of this dataset's examples (matched by id): nothing to start from")
    return [k for k, _ in matched], [y for _, y in matched]


def open_scalable(backend: LanguageModel, task, examples, config: RunConfig, snapshot=None,
                  progress: TrainProgress | None = None, seed: tuple[list[int], list[int]] | None = None,
                  seed_name: str = "") -> ScalableSearch:
    """Algorithm 3 with the run's learner as the fold scorer, over inputs prepared once."""
    from .finetune import make_learner

    learner = make_learner(backend, task, config.learner)
    folds = PreparedFolds(learner, learner.prepare(examples, progress), seed=config.search.seed, seed_labels=seed,
                          seed_name=seed_name)
    return ScalableSearch(folds, examples, task.rule, config.search, snapshot)


def advance(
    store: Store,
    run_id: int,
    search: Search,
    max_steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_step: Callable[[StepRecord], None] | None = None,
) -> int:
    """Run up to max_steps iterations (default: to the end), committing each; returns steps taken."""
    store.set_status(run_id, "running")
    taken = 0
    try:
        while not search.done and (max_steps is None or taken < max_steps) and not should_stop():
            record = search.step()
            store.record_step(run_id, record, search.snapshot())
            taken += 1
            if on_step is not None:
                on_step(record)
    except BaseException as error:  # a KeyboardInterrupt too: the run is marked, then the error goes on
        store.set_status(run_id, "failed" if isinstance(error, Exception) else "stopped", error=describe_error(error))
        raise
    store.set_status(run_id, "finished" if search.done else "paused")
    return taken


def is_user_error(error: BaseException) -> bool:
    """An error the user can act on (bad data, a model that will not load, a locked or foreign
    database): its message says what to do, and a traceback would only hide it."""
    return isinstance(error, (ValueError, OSError, StoreError))


def describe_error(error: BaseException) -> str:
    """One line for the run's status: the message of a user error, the type and message otherwise."""
    text = " ".join(str(error).split())
    return text if is_user_error(error) and text else f"{type(error).__name__}: {text}" if text else repr(error)


def finalize(store: Store, run_id: int, search: Search) -> StepRecord:
    """The final pass on demand (also mid-run): commit it as a step of the run."""
    record = search.final_pass()
    store.record_step(run_id, record, search.snapshot())
    if search.done:
        store.set_status(run_id, "finished")
    return record


def record_steering(store: Store, run_id: int, search: Search, record: StepRecord) -> None:
    """Persist a person's action (pin, unpin, exclude, include, set_param, extend) as an event; an
    extension also raises the step cap in the run's stored config, so a reopened run keeps it."""
    store.record_step(run_id, record, search.snapshot())
    stored = store.run(run_id)["config"]
    if stored["search"]["steps"] != search.config.steps:
        store.set_run_config(run_id, dict(stored, search=dict(stored["search"], steps=search.config.steps)))


def extend(store: Store, run_id: int, search: Search, steps: int) -> StepRecord:
    """`steps` more iterations for a run, recorded as a steering event."""
    record = search.extend(steps)
    record_steering(store, run_id, search, record)
    return record
