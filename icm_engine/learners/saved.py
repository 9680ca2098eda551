"""Fine-tuned models on disk, beside the database they were trained from.

`<db folder>/<db name>.finetuned/ft-<N>/` holds the trained weights (head.npz or adapter/), the
labels trained on (labels.csv: uid, label) and provenance.json: where the labels came from (the
database, the run, the dataset and task), the model and its revision, the learner's settings, the
loss curve and the time it took. A folder appears whole or not at all (written under a temporary
name, then renamed), so a killed fine-tune leaves nothing half-written behind.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .base import Trained

PREFIX = "ft-"


def finetuned_root(db_path: str | os.PathLike) -> Path:
    path = Path(db_path)
    return path.parent / f"{path.name.removesuffix('.duckdb')}.finetuned"


def _ids(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(p.name[len(PREFIX):]) for p in root.iterdir()
                  if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit())


def save_trained(root: Path, trained: Trained, provenance: dict, uids: Sequence[str], labels: Sequence[int]) -> str:
    """Write `trained` with its provenance and labels; returns its id (ft-N)."""
    root.mkdir(parents=True, exist_ok=True)
    number = (max(_ids(root)) + 1) if _ids(root) else 1
    name = f"{PREFIX}{number}"
    scratch = root / f".{name}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    trained.save(scratch)
    with open(scratch / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uid", "label"])
        writer.writerows(zip(uids, (int(y) for y in labels)))
    record = {"id": name, "kind": trained.kind, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "loss_curve": [float(v) for v in trained.loss_curve], **provenance}
    (scratch / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    scratch.rename(root / name)
    return name


def list_trained(root: Path) -> list[dict]:
    """Provenance of every fine-tuned model under `root`, oldest first."""
    return [read_provenance(root, f"{PREFIX}{n}") for n in _ids(root)]


def read_provenance(root: Path, model_id: str) -> dict:
    folder = root / model_id
    if not (folder / "provenance.json").is_file():
        known = ", ".join(f"{PREFIX}{n}" for n in _ids(root)) or "none yet"
        raise ValueError(f"no fine-tuned model {model_id!r} in {root} (there: {known})")
    return json.loads((folder / "provenance.json").read_text())
