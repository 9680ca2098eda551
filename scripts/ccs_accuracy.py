"""CCS probe accuracy against gold, beside zero-shot and an ICM run's, on the same examples.

The labelers see inputs only (as in `icm trust`); gold is read afterwards, to score. With --run,
the examples are that run's dataset and its labels are scored too; without it, --data/--task/--limit
choose the examples. The layer sweep scores a probe at every layer twice: with its sign oriented by
the calibrated zero-shot labels (what `icm trust` does) and at the better of its two signs (what the
ICM paper's appendix E.2 reports, which needs gold); `restarts` is how much the other restarts of
that fit agree with the kept probe, sign aside. --seeds refits the default layer's probe from other
seeds: `icm trust` calls the probe unstable when such refits agree on less than ccs.STABLE.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/ccs_accuracy.py --db runs/trust15.duckdb --run 1
    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python scripts/ccs_accuracy.py --data shared:sentiment --task sentiment_single --limit 64
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None, help="a runs database (with --run)")
    parser.add_argument("--run", type=int, default=None, help="score this run's labels and use its examples")
    parser.add_argument("--data", default="shared:sentiment")
    parser.add_argument("--task", default="sentiment_single")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--seed", type=int, default=0, help="the probe's restarts")
    parser.add_argument("--seeds", default=None, help="also refit the default layer's probe with these seeds (e.g. 1,2,3,4)")
    parser.add_argument("--no-sweep", action="store_true", help="only the default layer")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from icm_engine.evaluation import ccs
    from icm_engine.evaluation.baselines import decide, label_log_odds
    from icm_engine.core.config import ModelConfig
    from icm_engine.runs.models import load_model
    from icm_engine.core.tasks import load_task

    run_labels = None
    if args.run is not None:
        from icm_engine.runs.export import labeled_frame
        from icm_engine.store.database import Store

        with Store.existing(args.db) as store:
            run = store.run(args.run)
            task = load_task(store.dataset_task(run["dataset_id"]))
            examples = store.load_examples(run["dataset_id"])
            gold_map = store.load_gold(run["dataset_id"])
            frame = labeled_frame(store, args.run)
            run_labels = frame["label"].to_numpy()
            model_name = run["config"]["model"]["name"]
        where = f"run {args.run} of {args.db} ({len(examples)} examples, task {task.name})"
    else:
        from icm_engine.data.datasets import load_any

        data = load_any(args.data, task=args.task, limit=args.limit)
        task, examples, gold_map, model_name = data.task, data.examples, data.gold, args.model
        where = f"{args.data} --task {args.task} --limit {args.limit} ({len(examples)} examples)"
    backend = load_model(ModelConfig(model_name, device="cpu"))
    started = time.perf_counter()
    odds = label_log_odds(backend, task, (), examples)
    zero_shot = {"zero-shot (centered)": decide(odds, "centered"), "zero-shot (argmax)": decide(odds, "argmax")}
    n_layers = backend.hidden_layer_count
    layers = [ccs.default_layer(n_layers)] if args.no_sweep else list(range(1, n_layers + 1))
    negative, positive = ccs.contrast_states(backend, task, examples, layers)
    model_seconds = time.perf_counter() - started

    gold = np.array([int(gold_map[i]) for i in range(len(examples))])  # read only from here on, to score

    def accuracy(labels) -> float:
        labels = np.asarray(labels, dtype=float)
        known = ~np.isnan(labels)
        return float(np.mean(labels[known] == gold[known])) if known.any() else float("nan")

    sweep = []
    for k, layer in enumerate(layers):
        scores, loss, stability = ccs.fit_ccs(negative[k], positive[k], seed=args.seed)
        oriented, flipped, agreement = ccs.resolve_sign(scores, zero_shot["zero-shot (centered)"])
        raw = accuracy(scores > 0.5)
        sweep.append({"layer": layer, "loss": loss, "stability": stability, "accuracy_oriented_by_zero_shot": accuracy(oriented > 0.5),
                      "accuracy_best_sign": max(raw, 1 - raw), "zero_shot_agreement": agreement, "flipped": flipped,
                      "share_true": float(np.mean(oriented > 0.5))})
    default = next(row for row in sweep if row["layer"] == ccs.default_layer(n_layers))
    rows = {name: accuracy(labels) for name, labels in zero_shot.items()}
    rows[f"CCS probe (block {default['layer']} of {n_layers}, sign by zero-shot)"] = default["accuracy_oriented_by_zero_shot"]
    if run_labels is not None:
        labeled = int(np.sum(~np.isnan(run_labels.astype(float))))
        rows[f"ICM run {args.run} ({labeled} of {len(examples)} labeled)"] = accuracy(run_labels.astype(float))
    print(f"examples: {where}; gold: {int(gold.sum())} True of {len(gold)}; model {model_name}, "
          f"{model_seconds:.0f} s of model time")
    print(f"{'labeler':58s} accuracy")
    for name, value in rows.items():
        print(f"{name:58s} {value:.3f}")
    if len(sweep) > 1:
        print("\nCCS layer sweep (gold used to score only; the default layer was not chosen from this):")
        print(f"{'layer':>5s} {'loss':>8s} {'restarts':>8s} {'oriented':>9s} {'best sign':>9s} {'zs agree':>9s} {'share True':>10s}")
        for row in sweep:
            print(f"{row['layer']:5d} {row['loss']:8.4f} {row['stability']:8.2f} {row['accuracy_oriented_by_zero_shot']:9.3f} "
                  f"{row['accuracy_best_sign']:9.3f} {row['zero_shot_agreement']:9.3f} {row['share_true']:10.2f}")
    by_seed = {}
    if args.seeds:
        k = layers.index(default["layer"])
        fits = [ccs.fit_ccs(negative[k], positive[k], seed=args.seed)]
        for seed in [int(x) for x in args.seeds.split(",")]:
            fits.append(ccs.fit_ccs(negative[k], positive[k], seed=seed))
            by_seed[seed] = accuracy(ccs.resolve_sign(fits[-1].scores, zero_shot["zero-shot (centered)"])[0] > 0.5)
        values = [default["accuracy_oriented_by_zero_shot"], *by_seed.values()]
        print(f"\nCCS at block {default['layer']} by probe seed: {args.seed}: {values[0]:.3f}, "
              + ", ".join(f"{s}: {v:.3f}" for s, v in by_seed.items())
              + f"; mean {np.mean(values):.3f}, sd {np.std(values, ddof=1):.3f}; the probes agree on "
              f"{ccs.seed_stability([f.scores for f in fits]):.0%} of labels, sign aside")
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"examples": where, "accuracy": rows, "sweep": sweep, "by_seed": by_seed}, file, indent=2)


if __name__ == "__main__":
    main()
