"""Labeled data out of a run, for fine-tuning: CSV, SFT JSONL, preference JSONL, provenance JSON.

Each function returns bytes, so the CLI writes exactly what the app offers as a download.
Nothing here depends on wall-clock time: exporting the same run twice gives identical files.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from .scoring import normalize
from .store import Store
from .tasks import LABEL_NAMES, load_task

FORMATS = ("csv", "sft", "preference", "provenance")


def labeled_frame(store: Store, run_id: int) -> pd.DataFrame:
    """One row per labeled example: inputs, label, and the model's confidence in that label."""
    run = store.run(run_id)
    task = load_task(store.dataset_task(run["dataset_id"]))
    examples = store.load_examples(run["dataset_id"])
    labels = store.labels(run_id).sort_values("example")
    rows = []
    for row in labels.itertuples(index=False):
        example = examples[int(row.example)]
        record = {"uid": example.uid}
        record.update({name: example.fields[name] for name in task.fields})
        record.update({"group": example.group, "key": example.key})
        record["label"] = int(row.label)
        record["label_name"] = LABEL_NAMES[int(row.label)]
        confidence = None
        if not (pd.isna(row.logp_false) or pd.isna(row.logp_true)):
            logp = normalize(np.array([row.logp_false, row.logp_true]))[0]
            confidence = float(np.exp(logp[int(row.label)]))
        record["confidence"] = confidence
        record["pinned"] = bool(row.pinned)
        rows.append(record)
    columns = ["uid", *task.fields, "group", "key", "label", "label_name", "confidence", "pinned"]
    return pd.DataFrame(rows, columns=columns)


def to_csv(store: Store, run_id: int) -> bytes:
    return labeled_frame(store, run_id).to_csv(index=False).encode("utf-8")


def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


def to_sft_jsonl(store: Store, run_id: int) -> bytes:
    """Prompt/completion pairs in the task's own format: the completion is the label word."""
    run = store.run(run_id)
    task = load_task(store.dataset_task(run["dataset_id"]))
    examples = store.load_examples(run["dataset_id"])
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
    run = store.run(run_id)
    task = load_task(store.dataset_task(run["dataset_id"]))
    if task.pairwise_fields is None:
        raise ValueError(f"task {task.name!r} is not pairwise: preference export needs pairwise_fields")
    first, second = task.pairwise_fields
    examples = store.load_examples(run["dataset_id"])
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
    """Where the labels came from: config, model, seed, steps and times of the run."""
    run = store.run(run_id)
    labels = store.labels(run_id)
    record = {
        "run_id": int(run_id),
        "name": run.get("name"),
        "dataset_id": int(run["dataset_id"]),
        "task": store.dataset_task(run["dataset_id"]),
        "config": run["config"],
        "model": run["model"],
        "seed": run["config"]["search"]["seed"],
        "status": run["status"],
        "iterations": int(run["last_iteration"]) if run.get("last_iteration") is not None else None,
        "created_at": str(run["created_at"]),
        "updated_at": str(run["updated_at"]),
        "labeled": int(len(labels)),
        "label_counts": {LABEL_NAMES[k]: int((labels["label"] == k).sum()) for k in (0, 1)},
        "pinned": int(labels["pinned"].sum()) if len(labels) else 0,
    }
    return (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def export(store: Store, run_id: int, fmt: str) -> bytes:
    writers = {"csv": to_csv, "sft": to_sft_jsonl, "preference": to_preference_jsonl, "provenance": provenance}
    if fmt not in writers:
        raise ValueError(f"format must be one of {FORMATS}")
    return writers[fmt](store, run_id)
