"""Score every label set an evaluation stored with the search's own predictability.

Is a search short of its objective's optimum, or is the optimum itself short of the truth? For
each method's final labels on the search split (and gold), print label accuracy and P(D) under a
given objective and calibration. With --relabel-rounds R, also relabel each set R times by the
self-labeling update (every example gets argmax P(y | x, all others) under the centered rule) and
print the accuracy after each round: does a labeling settle where self-labeling does?
Gold is read to score only, as in `icm eval`.

    .venv/bin/python scripts/score_label_sets.py --db runs/eval_amazon32.duckdb --data shared:amazon
"""
from __future__ import annotations

import argparse
import json

import duckdb
import numpy as np

from icm_engine.core.config import ModelConfig
from icm_engine.core.scoring import Scorer
from icm_engine.data.datasets import load_any
from icm_engine.evaluation.baselines import relabel_round
from icm_engine.evaluation.comparison import split_by_group
from icm_engine.runs.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a database written by `icm eval`")
    parser.add_argument("--data", required=True, help="the --data that evaluation used, e.g. shared:amazon")
    parser.add_argument("--task", default="sentiment_single")
    parser.add_argument("--objective", default="chance")
    parser.add_argument("--calibration", default="centered")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--relabel-rounds", type=int, default=0, help="self-labeling rounds started from each set")
    args = parser.parse_args()
    con = duckdb.connect(args.db, read_only=True)
    config = json.loads(con.execute("SELECT config_json FROM eval_runs ORDER BY eval_id LIMIT 1").fetchone()[0])
    rows = con.execute("SELECT method, seed, extra_json FROM eval_rows ORDER BY row_no").fetchall()
    con.close()
    data = load_any(args.data, task=args.task, limit=config["search_size"] + config["test_size"])
    split = split_by_group(data.examples, config["search_size"], config["test_size"], config["split_seed"],
                           config["size_unit"])
    examples = [data.examples[i] for i in split.search]
    gold = np.array([int(data.gold[i]) for i in split.search])
    backend = load_model(ModelConfig(args.model))
    scorer = Scorer(backend, data.task, examples, calibration=args.calibration,
                    use_consistency=False, objective=args.objective)
    raw_scorer = Scorer(backend, data.task, examples, calibration="none", use_consistency=False)
    order = list(range(len(examples)))

    def predictability(labels) -> float:
        return scorer.evaluate(order, dict(enumerate(int(y) for y in labels))).predictability

    print(f"P(D) under {args.objective}/{args.calibration} on {len(examples)} search examples of {args.data}")
    print(f"gold: P={predictability(gold):.3f}", flush=True)
    for method, seed, extra in rows:
        extra = json.loads(extra)
        if extra.get("table") != "labels" or any(y is None for y in extra["labels"]):
            continue
        labels = np.array(extra["labels"])
        line = f"{method} seed {seed}: accuracy {np.mean(labels == gold):.3f}, P={predictability(labels):.3f}"
        accuracies = []
        for _ in range(args.relabel_rounds):
            labels = np.array(relabel_round(raw_scorer, labels, "centered"))
            accuracies.append(f"{np.mean(labels == gold):.3f}")
        print(line + (f"; relabeled: {' -> '.join(accuracies)}" if accuracies else ""), flush=True)


if __name__ == "__main__":
    main()
