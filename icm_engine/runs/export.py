"""Labeled data out of a run, for fine-tuning: CSV, SFT JSONL, preference JSONL, provenance JSON.

The CSV holds every example of the dataset, one row each: its label (empty when it has none),
where the label came from (search, final_pass, person, excluded, unlabeled), the model's
confidence in it under the run's own calibration, and the iteration it was last set. The
fine-tuning files hold the labeled examples only, and the provenance file says how many that
is of how many. Each function returns bytes, so the CLI writes exactly what the app offers as a
download. Nothing here depends on wall-clock time: exporting the same run twice gives identical files.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..core.errors import InputError
from ..core.records import STEERING_KINDS
from ..core.scoring import label_confidence
from ..core.tasks import LABEL_NAMES
from ..store.database import Store
from ..store.run_loader import load_run
from .batches import batch_table, is_batched, members

FORMATS = ("csv", "sft", "preference", "provenance")
# Where an example's label came from, read from its last flip (records.FLIP_CAUSES).
SOURCES = ("search", "final_pass", "person", "excluded", "unlabeled")
_SOURCE_OF_CAUSE = {"initial": "search", "proposal": "search", "fix": "search", "final_pass": "final_pass", "human": "person"}


class ExportError(InputError, ValueError):
    """A format this run cannot be written in."""


def labeled_frame(store: Store, run_id: int) -> pd.DataFrame:
    """One row per example of the run's dataset: inputs, label, its source, confidence, last change.
    A batched run's rows are its batch runs' rows of their own examples, each as that run is now
    (runs/batches.py): sources and confidences as each batch's search scored them."""
    stored = load_run(store, run_id)
    if not is_batched(stored.run["config"]):
        return _frame(store, stored, run_id, range(len(stored.examples)))
    parts = [_frame(store, stored, child, members(store, child)) for child in store.child_runs(run_id)]
    covered = {i for part in parts for i in part.index}
    rest = [i for i in range(len(stored.examples)) if i not in covered]  # batches not created yet
    if rest:
        parts.append(_frame(store, stored, run_id, rest))
    return pd.concat(parts).sort_index()


def _frame(store: Store, stored, run_id: int, indices) -> pd.DataFrame:
    """labeled_frame's rows of `indices` (examples of stored's dataset), read from run `run_id`, indexed by example."""
    run, task, examples = store.run(run_id), stored.task, stored.examples
    labels = store.labels(run_id).set_index("example")
    snapshot = store.load_snapshot(run_id)
    excluded = snapshot.excluded if snapshot else set()
    flips = store.flips(run_id)
    last = flips.sort_values(["seq", "ord"]).groupby("example").last() if len(flips) else pd.DataFrame()
    calibration = run["config"].get("search", {}).get("calibration", "none")
    # as scored given the rest of the labeled set, under the run's own calibration
    probability, log_odds = label_confidence(labels[["logp_false", "logp_true"]].to_numpy(dtype=float),
                                             labels["label"].to_numpy(dtype=int), calibration)
    confidence = dict(zip(labels.index.astype(int), probability))
    odds = dict(zip(labels.index.astype(int), log_odds))
    rows = []
    for index in indices:
        example = examples[index]
        record = {"uid": example.uid, **{name: example.fields[name] for name in task.fields},
                  "group": example.group, "key": example.key}
        labeled = index in labels.index
        label = int(labels.at[index, "label"]) if labeled else None
        pinned = bool(labels.at[index, "pinned"]) if labeled else False
        if index in excluded:
            source = "excluded"
        elif not labeled:
            source = "unlabeled"
        elif pinned:
            source = "person"
        else:
            source = _SOURCE_OF_CAUSE.get(str(last.at[index, "cause"]) if index in last.index else "initial", "search")
        value = confidence.get(index, np.nan)
        record.update({
            "label": label, "label_name": None if label is None else LABEL_NAMES[label], "source": source,
            "confidence": None if np.isnan(value) else float(value),
            "log_odds": None if np.isnan(odds.get(index, np.nan)) else float(odds[index]),
            "last_set_iteration": int(last.at[index, "iteration"]) if index in last.index else None,
            "pinned": pinned,
        })
        rows.append(record)
    columns = ["uid", *task.fields, "group", "key", "label", "label_name", "source", "confidence", "log_odds",
               "last_set_iteration", "pinned"]
    frame = pd.DataFrame(rows, columns=columns, index=pd.Index(list(indices), dtype=int))
    for column in ("label", "last_set_iteration"):
        frame[column] = frame[column].astype("Int64")  # empty, not NaN-as-float, where there is none
    return frame


def to_csv(store: Store, run_id: int) -> bytes:
    return labeled_frame(store, run_id).to_csv(index=False).encode("utf-8")


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def to_sft_jsonl(store: Store, run_id: int) -> bytes:
    """Prompt/completion pairs in the task's own format: the completion is the label word."""
    stored = load_run(store, run_id)
    task, examples = stored.task, stored.examples
    frame = store.labels(run_id).sort_values("example")
    return _jsonl(
        {"uid": examples[int(r.example)].uid, "prompt": task.render_query(examples[int(r.example)]),
         "completion": task.label_words[int(r.label)]}
        for r in frame.itertuples(index=False)
    )


def to_preference_jsonl(store: Store, run_id: int) -> bytes:
    """For pairwise tasks: (prompt, chosen, rejected) per comparison, as reward-model trainers expect.

    A claim "A beats B" labeled True prefers A; labeled False prefers B. When a pair's two orders
    are both labeled they agree (the consistency rule), so each comparison is written once.
    """
    stored = load_run(store, run_id)
    task, examples = stored.task, stored.examples
    if task.pairwise_fields is None:
        raise ExportError(f"run {run_id}'s task {task.name!r} is not pairwise (it has no pairwise_fields): the "
                          f"preference format needs two responses to choose between; export csv or sft instead")
    first, second = task.pairwise_fields
    seen, records = set(), []
    for row in store.labels(run_id).sort_values("example").itertuples(index=False):
        example = examples[int(row.example)]
        group = example.group if example.group is not None else example.uid
        if group in seen:
            continue
        seen.add(group)
        a, b = example.fields[first], example.fields[second]
        chosen, rejected = (a, b) if int(row.label) == 1 else (b, a)
        prompt = example.fields.get("prompt", "")
        records.append({"group": group, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    return _jsonl(records)


def provenance(store: Store, run_id: int) -> bytes:
    """Where the labels came from: the config as started and the settings in force at the end,
    every steering event, the model, the dataset's size and how much of it is labeled, by whom."""
    run = store.run(run_id)
    frame = labeled_frame(store, run_id)
    snapshot = store.load_snapshot(run_id)
    events = store.events(run_id)
    steering = events[events["kind"].isin(STEERING_KINDS)] if len(events) else events
    changes: dict[int, list] = {}  # a set_param event's parameters, from their rows (the note is for people)
    for c in store.param_changes(run_id).itertuples(index=False):
        changes.setdefault(int(c.seq), []).append({"parameter": c.parameter, "new": float(c.new_value),
                                                   "old": None if pd.isna(c.old_value) else float(c.old_value)})
    search = dict(run["config"].get("search", {}))
    effective = dict(search, **({} if snapshot is None else {"alpha": snapshot.alpha, "t0": snapshot.t0}))
    labeled = frame[frame["label"].notna()]
    iterations = int(snapshot.iteration) if snapshot is not None else None
    record = {
        "run_id": int(run_id),
        "name": run.get("name"),
        "dataset_id": int(run["dataset_id"]),
        "task": store.dataset_task(run["dataset_id"]),
        "config": run["config"],
        "effective_settings": effective,
        "model": run["model"],
        "seed": search.get("seed"),
        "status": run["status"],
        "iterations": iterations,
        "created_at": str(run["created_at"]),
        "updated_at": str(run["updated_at"]),
        "dataset_size": int(len(frame)),
        "labeled": int(len(labeled)),
        "coverage": float(len(labeled) / len(frame)) if len(frame) else 0.0,
        "by_source": {source: int((frame["source"] == source).sum()) for source in SOURCES},
        "label_counts": {LABEL_NAMES[k]: int((labeled["label"] == k).sum()) for k in (0, 1)},
        "pinned": int(frame["pinned"].sum()),
        "progress": None if snapshot is None else {
            "accepted_changes": snapshot.progress.accepted_changes, "labeled_by_search_at": snapshot.progress.labeled_at,
            "labeled_by_search_before_final_pass": snapshot.progress.search_labeled},
        "steering": [
            {"iteration": int(e.iteration), "kind": e.kind, "example": None if pd.isna(e.example) else int(e.example),
             "label": None if pd.isna(e.proposed_label) else int(e.proposed_label), "note": e.note,
             "changes": changes.get(int(e.seq), [])}
            for e in steering.itertuples(index=False)
        ],
    }
    if is_batched(run["config"]):  # where each batch's labels came from: its own run's provenance
        record["batches"] = [{"batch": f"{row.index}/{row.total}", "run_id": row.run_id, "status": row.status,
                              "examples": row.examples, "labeled": row.labeled,
                              "seed": store.run(row.run_id)["config"]["search"]["seed"]}
                             for row in batch_table(store, run_id)]
    return (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def export(store: Store, run_id: int, fmt: str) -> bytes:
    writers = {"csv": to_csv, "sft": to_sft_jsonl, "preference": to_preference_jsonl, "provenance": provenance}
    if fmt not in writers:
        raise ExportError(f"format must be one of {FORMATS}, got {fmt!r}")
    return writers[fmt](store, run_id)
