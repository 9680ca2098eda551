"""A trust report's baseline labels out, in a run's own export formats (runs/export.py): CSV with one
row per example of the dataset, and SFT JSONL. A baseline labels every example, so its CSV has
no unlabeled rows; `source` names the baseline and `confidence` is its P(label) where it has one
(zero-shot, CCS), empty where it has none (self-labeling).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from ..core.tasks import LABEL_NAMES
from ..store.database import Store
from ..store.run_loader import load_run

BASELINE_FORMATS = ("csv", "sft")
SUFFIX = {"csv": ".csv", "sft": ".sft.jsonl"}


def slug(name: str) -> str:
    """A baseline's name as a file name part: "zero-shot (centered)" -> "zero-shot-centered"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "baseline"


def baseline_frame(store: Store, run_id: int, name: str, labels, p_true=None) -> pd.DataFrame:
    """One row per example of the run's dataset with the baseline's label, like export.labeled_frame."""
    stored = load_run(store, run_id)
    task, examples = stored.task, stored.examples
    labels = np.asarray(labels, dtype=int)
    if len(labels) != len(examples):
        raise ValueError(f"baseline {name!r} has {len(labels)} labels for {len(examples)} examples")
    rows = []
    for index, example in enumerate(examples):
        label = int(labels[index])
        probability = None if p_true is None else float(p_true[index] if label == 1 else 1 - p_true[index])
        rows.append({"uid": example.uid, **{f: example.fields[f] for f in task.fields}, "group": example.group,
                     "key": example.key, "label": label, "label_name": LABEL_NAMES[label], "source": name,
                     "confidence": probability})
    return pd.DataFrame(rows, columns=["uid", *task.fields, "group", "key", "label", "label_name", "source", "confidence"])


def export_baseline(store: Store, run_id: int, name: str, labels, p_true=None, fmt: str = "csv") -> bytes:
    """The baseline's labels as bytes in `fmt` (csv or sft), as export.export gives a run's."""
    if fmt == "csv":
        return baseline_frame(store, run_id, name, labels, p_true).to_csv(index=False).encode("utf-8")
    if fmt == "sft":
        stored = load_run(store, run_id)
        task, examples = stored.task, stored.examples
        return "".join(json.dumps({"uid": e.uid, "prompt": task.render_query(e),
                                   "completion": task.label_words[int(y)]}, ensure_ascii=False, sort_keys=True) + "\n"
                       for e, y in zip(examples, labels)).encode("utf-8")
    raise ValueError(f"format must be one of {BASELINE_FORMATS}")


def report_exports(store: Store, report, fmt: str = "csv") -> dict[str, bytes]:
    """File name -> bytes for every baseline of a TrustReport."""
    return {f"run-{report.run_id}-{slug(name)}{SUFFIX[fmt]}":
            export_baseline(store, report.run_id, name, labels, report.baseline_p_true.get(name), fmt)
            for name, labels in report.baseline_labels.items()}
