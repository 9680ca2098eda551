"""Agreement with gold of a labels CSV (uid, label; per batch where it has a batch column), the gold read
from the ICM Studio database the labels came from. Audit only: gold never reaches a search or a learner.

    .venv/bin/python scripts/labels_vs_gold.py --db runs/icm.duckdb --csv iterative.csv [--compare icm_label]
"""
from __future__ import annotations

import argparse

import pandas as pd

from icm_engine.store.database import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--csv", required=True, help="a labels file with uid and label columns (icm export, "
                                                      "icm finetune --iterative --out, icm predict --out)")
    parser.add_argument("--compare", nargs="*", default=[], help="other label columns of the file to score too")
    args = parser.parse_args()
    labels = pd.read_csv(args.csv)
    gold = {}
    with Store.existing(args.db, read_only=True) as store:
        for dataset_id in store.datasets()["dataset_id"]:
            found = store.load_gold(int(dataset_id)) or {}
            examples = store.load_examples(int(dataset_id))
            gold.update({examples[i].uid: label for i, label in found.items()})
    scored = labels[labels["uid"].isin(gold)].copy()
    scored["gold"] = scored["uid"].map(gold)
    columns = ["label", *args.compare]
    print(f"{len(scored)} of {len(labels)} rows have gold in {args.db}")
    for column in columns:
        print(f"  {column}: agreement with gold {(scored[column] == scored['gold']).mean():.3f}")
    if "batch" in scored:
        for batch, rows in scored.groupby("batch"):
            print(f"  batch {batch}: " + ", ".join(f"{c} {(rows[c] == rows['gold']).mean():.3f}" for c in columns)
                  + f" ({len(rows)} rows)")


if __name__ == "__main__":
    main()
