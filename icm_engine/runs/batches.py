"""A dataset too large for one in-context search, the released code's way: batches.

The released code's README splits a dataset into batches of about 256 examples (whole consistency
groups, as many as the context holds) and runs ICM on each independently. Here that is one parent
run, whose config carries `search.batch_size`, and one batch run per batch (parent_run_id = the
parent): an ordinary in-context run whose config names its `members`, every other example excluded
from its search from the start (runner.open_search), so it never sees another batch. Example
indices stay the dataset's, so the union of the batch runs' labels is the parent's labeling: it is
written as the parent's labels after each batch finishes (Store.replace_labels), and export,
report, trust and the studio read the parent over the whole dataset.

A batch run's seed is the parent's plus its index (0 for the first batch), so batches do not share
random streams. The plan is deterministic, and batch runs are created in plan order, so a parent
killed while creating them is completed on resume (ensure_batches).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import pandas as pd

from ..backends.base import LanguageModel
from ..core.config import RunConfig
from ..core.errors import InputError
from ..core.prompts import Prompts
from ..core.records import StepRecord
from ..core.search import Search
from ..core.tasks import Example, Task
from ..store.database import Store
from ..store.run_loader import load_dataset_inputs
from .runner import advance, describe_error, open_search


class BatchError(InputError, ValueError):
    """A batched run that cannot be planned or continued as asked; the message says why."""


def plan_batches(task: Task, examples: Sequence[Example], backend: LanguageModel, batch_size: int) -> list[list[int]]:
    """Consecutive batches, in dataset order, of at most `batch_size` examples (one consistency group
    larger than that makes a batch of its own), never splitting a group, and each small enough that
    one prompt holding all its examples (each with its longer label word) fits the model's context
    window: a batch closes early when the next group would overflow it. Groups are taken whole where
    their first member comes. Raises BatchError for a group no prompt can hold."""
    if batch_size < 1:
        raise BatchError(f"batch_size must be at least 1, got {batch_size}")
    prompts = Prompts(task, examples)
    answer = max(backend.count_tokens(prompts.answer(y)) for y in (0, 1))
    room = backend.context_window - 1  # the label word is read at the position after the prompt
    units: dict[object, list[int]] = {}  # a group's members, or an ungrouped example alone
    for i, example in enumerate(examples):
        units.setdefault(("group", example.group) if example.group is not None else ("example", i), []).append(i)
    batches, current, used = [], [], 0
    for unit in units.values():
        tokens = sum(backend.count_tokens(prompts.query(i)) + answer for i in unit)
        if tokens > room:
            what = f"group {examples[unit[0]].group!r}" if len(unit) > 1 else f"example {examples[unit[0]].uid!r}"
            raise BatchError(f"{what} ({len(unit)} examples, {tokens} tokens with its labels) does not fit the model's "
                             f"context window of {backend.context_window} tokens in one prompt")
        if current and (len(current) + len(unit) > batch_size or used + tokens > room):
            batches.append(current)
            current, used = [], 0
        current, used = current + unit, used + tokens
    if current:
        batches.append(current)
    return [sorted(batch) for batch in batches]


def is_batched(config: dict) -> bool:
    """A stored run config (Store.run(...)["config"]) of a parent whose batch runs search."""
    return bool((config.get("search") or {}).get("batch_size"))


def create_batched_run(store: Store, dataset_id: int, config: RunConfig, backend: LanguageModel, name: str = "") -> int:
    """The parent run and its batch runs (see the module docstring); returns the parent's id."""
    if not config.search.batch_size:
        raise BatchError("a batched run needs search.batch_size > 0")
    plan_batches(*load_dataset_inputs(store, dataset_id), backend, config.search.batch_size)  # refused before any row
    parent = store.create_run(dataset_id, config.to_dict(), asdict(backend.info), name=name)
    ensure_batches(store, parent, backend)
    return parent


def ensure_batches(store: Store, parent_id: int, backend: LanguageModel) -> list[int]:
    """The parent's batch runs, the missing ones created first (all of them for a parent created
    before its model loaded, as the studio does; the rest for one killed while creating them)."""
    parent = store.run(parent_id)
    config = RunConfig.from_dict(parent["config"])
    children = store.child_runs(parent_id)
    task, examples = load_dataset_inputs(store, parent["dataset_id"])
    covered = {i for child in children for i in members(store, child)}
    if len(covered) == len(examples):
        return children
    plan = plan_batches(task, examples, backend, config.search.batch_size)
    made = [list(members(store, child)) for child in children]
    if made != plan[:len(made)]:
        raise BatchError(f"run {parent_id}'s batch runs do not follow the plan for {backend.name}: it was planned "
                         "with another model's tokenizer or context window; start a new batched run")
    for k in range(len(children), len(plan)):
        batch = replace(config, search=replace(config.search, batch_size=0, seed=config.search.seed + k),
                        members=tuple(plan[k]))
        store.create_run(parent["dataset_id"], batch.to_dict(), asdict(backend.info),
                         name=f"{parent['name']} batch {k + 1}/{len(plan)}", parent_run_id=parent_id)
    return store.child_runs(parent_id)


def members(store: Store, run_id: int) -> tuple[int, ...]:
    """A batch run's examples (dataset indices)."""
    found = store.run(run_id)["config"].get("members")
    if found is None:
        raise BatchError(f"run {run_id} is not a batch run (its config names no members)")
    return tuple(int(i) for i in found)


def collect_labels(store: Store, parent_id: int) -> int:
    """Write the union of the batch runs' labels (each on its own members) as the parent's labels;
    returns how many. Positions follow batch order, then each batch's demonstration order."""
    frames = []
    for child in store.child_runs(parent_id):
        labels = store.labels(child)
        own = labels[labels["example"].isin(members(store, child))]
        if len(own):
            frames.append(own[["example", "label", "position", "logp_false", "logp_true", "pinned"]])
    union = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["example", "label", "position", "logp_false", "logp_true", "pinned"])
    union["position"] = range(len(union))
    store.replace_labels(parent_id, union)
    return len(union)


@dataclass(frozen=True)
class BatchRow:
    index: int  # 1-based, as people count batches
    total: int
    run_id: int
    status: str
    examples: int
    labeled: int  # of its members


def batch_table(store: Store, parent_id: int) -> list[BatchRow]:
    """Each batch run of a parent: its place, status, size and how much of it is labeled."""
    children = store.child_runs(parent_id)
    rows = []
    for k, child in enumerate(children):
        own = set(members(store, child))
        labeled = int(store.labels(child)["example"].isin(own).sum())
        rows.append(BatchRow(k + 1, len(children), child, store.run(child)["status"], len(own), labeled))
    return rows


def batch_positions(runs: pd.DataFrame) -> dict[int, tuple[int, int, int]]:
    """From Store.runs(): each batch run's (index from 1, number of batches, parent run id)."""
    if not len(runs) or "parent_run_id" not in runs:
        return {}
    parents = {int(r): is_batched(json.loads(c)) for r, c in zip(runs["run_id"], runs["config_json"])}
    children = runs[runs["parent_run_id"].notna()].sort_values("run_id")
    positions = {}
    for parent, group in children.groupby("parent_run_id"):
        if parents.get(int(parent)):
            for k, child in enumerate(group["run_id"]):
                positions[int(child)] = (k + 1, len(group), int(parent))
    return positions


def run_batches(store: Store, parent_id: int, run_one: Callable[[int, int, int], bool],
                after: Callable[[int, int, int], None] | None = None) -> bool:
    """Run the parent's unfinished batch runs in order, each by run_one(run_id, index from 1, total),
    which answers whether it finished; after each finished one the parent's labels are the union
    so far, then after(run_id, index, total) hears of it. The parent is marked running, then
    finished when all are, or as the batch run that did not finish (paused, stopped) or failed.
    Returns whether all finished."""
    children = store.child_runs(parent_id)
    if not children:
        raise BatchError(f"run {parent_id} has no batch runs yet: create them with ensure_batches")
    store.set_status(parent_id, "running")
    try:
        collect_labels(store, parent_id)
        for k, child in enumerate(children):
            if store.run(child)["status"] == "finished":
                continue
            if not run_one(child, k + 1, len(children)):
                state = store.run(child)["status"]
                state = state if state in ("stopped", "failed") else "paused"
                store.set_status(parent_id, state,
                                 error=f"batch {k + 1}/{len(children)} (run {child}) failed" if state == "failed" else None)
                return False
            collect_labels(store, parent_id)
            if after is not None:
                after(child, k + 1, len(children))
    except BaseException as error:  # a KeyboardInterrupt too: the parent is marked, then the error goes on
        store.set_status(parent_id, "failed" if isinstance(error, Exception) else "stopped", error=describe_error(error))
        raise
    store.set_status(parent_id, "finished")
    return True


def advance_batches(store: Store, parent_id: int, backend: LanguageModel,
                    on_batch: Callable[[int, int, int, Search], None] | None = None,
                    on_step: Callable[[Search, StepRecord], None] | None = None,
                    on_batch_done: Callable[[int, int, int], None] | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Run the parent's unfinished batch runs to the end, in order, each its normal search with its
    final pass (a parent killed mid-batch continues from that batch's last step): on_batch(index,
    total, run_id, search) as each starts, on_step(search, record) after each step, and
    on_batch_done(index, total, run_id) once its labels are the parent's. Returns whether all finished."""
    ensure_batches(store, parent_id, backend)

    def run_one(child: int, index: int, total: int) -> bool:
        search = open_search(store, child, backend)
        if on_batch is not None:
            on_batch(index, total, child, search)
        advance(store, child, search, should_stop=should_stop,
                on_step=None if on_step is None else (lambda record: on_step(search, record)))
        return search.done

    after = None if on_batch_done is None else (lambda child, index, total: on_batch_done(index, total, child))
    return run_batches(store, parent_id, run_one, after)


def refresh_parent(store: Store, run_id: int) -> int | None:
    """After a batch run moved on its own (resumed, steered, extended): its parent's labels again,
    and the parent finished when every batch is (paused again when a finished one was continued).
    Returns the parent's id, None for other runs."""
    parent_id = store.run(run_id)["parent_run_id"]
    if parent_id is None or not is_batched(store.run(int(parent_id))["config"]):
        return None
    parent_id = int(parent_id)
    collect_labels(store, parent_id)
    every = all(store.run(child)["status"] == "finished" for child in store.child_runs(parent_id))
    if every:
        store.set_status(parent_id, "finished")
    elif store.run(parent_id)["status"] == "finished":  # a batch continued past its end: the parent is not done
        store.set_status(parent_id, "paused")
    return parent_id
