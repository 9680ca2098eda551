"""Rebuild the bundled samples in sample_data/ from the real data in ../shared/data.

The samples are ordinary upload files (one row per claim, gold in a `gold` column), so the app
and `load_sample` read them exactly as they read a user's table. Rebuilding is deterministic:
same data, same seed, byte-identical files (tests/test_datasets.py checks this).

    .venv/bin/python -m icm_engine.data.sample_builder [OUT_DIR]
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

from .base import LoadedDataset
from .datasets import SAMPLE_DIR
from .shared_data import load_gsm8k, load_hh_rlhf, load_sentiment, load_truthfulqa, shared_data_dir

SEED = 0  # the samples' subset and within-group order
SIZES = {"sentiment_yelp": 200, "truthfulqa": 64, "gsm8k_verification": 48, "hh_rlhf_harmless": 64}  # groups
MAX_BYTES = 300_000  # keep the repository light


def _rows(dataset: LoadedDataset, group: bool, key: bool) -> list[dict]:
    """One row per example: id[, group][, key], the task's fields, gold."""
    rows = []
    for index, example in enumerate(dataset.examples):
        row = {"id": example.uid}
        row |= {"group": example.group} if group else {}
        row |= {"key": example.key} if key else {}
        rows.append(row | dict(example.fields) | {"gold": dataset.gold[index]})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_samples(out_dir: str | Path = SAMPLE_DIR, data_dir: str | Path | None = None) -> list[Path]:
    """Write the four sample files and their license files into out_dir; returns what was written.

    The README.md there is written by hand and left alone.
    """
    out, data = Path(out_dir), shared_data_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    # gsm8k gets no key column: load_sample derives it from the solution, as for any upload
    files = {
        "sentiment_yelp.csv": _rows(load_sentiment("yelp", True, SIZES["sentiment_yelp"], SEED, data), False, False),
        "truthfulqa.jsonl": _rows(load_truthfulqa(data, SIZES["truthfulqa"], SEED), True, False),
        "gsm8k_verification.jsonl": _rows(load_gsm8k(data, SIZES["gsm8k_verification"], SEED), True, False),
        "hh_rlhf_harmless.jsonl": _rows(load_hh_rlhf(data, SIZES["hh_rlhf_harmless"], SEED), True, True),
    }
    written = []
    for name, rows in files.items():
        path = out / name
        (_write_csv if name.endswith(".csv") else _write_jsonl)(path, rows)
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{path} is {path.stat().st_size} bytes, over {MAX_BYTES}: lower SIZES")
        written.append(path)
    # licenses and the original readme travel with the data, as the data README asks
    for source, target in (("gsm8k/LICENSE", "gsm8k_verification.LICENSE"),
                           ("hh_rlhf/LICENSE", "hh_rlhf_harmless.LICENSE"),
                           ("sentiment/readme.txt", "sentiment_yelp.readme.txt")):
        shutil.copyfile(data / source, out / target)
        written.append(out / target)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for path in build_samples(args[0] if args else SAMPLE_DIR):
        print(f"{path}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
