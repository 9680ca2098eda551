"""Label accuracy of large runs (scalable ICM, a seed batch) beside the cheap labelers of the same examples.

For each run given: its labels' agreement with gold on every example it labeled, coverage, share True
and its wall time (first event to last). Then, on the dataset of the first run, the baselines with the
same model: zero-shot labels (centered), iterated self-labeling with the head learner (fit a head on
the current labels of all examples, relabel all, centered; `--rounds` times from zero-shot; the
in-context self-labeling of `icm eval` cannot hold 1,000 demonstrations on this machine), and random
labels. Gold is read to score only.

    .venv/bin/python scripts/large_labels.py --db runs/amazon1000.duckdb --runs 1 2
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np

from icm_engine.core.config import LearnerConfig, ModelConfig, RunConfig
from icm_engine.core.scalable import ScalableSearch
from icm_engine.evaluation.baselines import decide, random_labels
from icm_engine.learners.folds import PreparedFolds
from icm_engine.learners.head import HeadLearner
from icm_engine.runs.models import load_model
from icm_engine.store.database import Store
from icm_engine.store.run_loader import load_run


def describe(store: Store, run_id: int) -> tuple[int, dict[str, int]]:
    run = store.run(run_id)
    gold = store.load_gold(run["dataset_id"]) or {}
    labels = store.labels(run_id)
    events = store.events(run_id)
    wall = (events["created_at"].max() - events["created_at"].min()).total_seconds() if len(events) else 0.0
    pairs = [(int(y), gold[int(e)]) for e, y in zip(labels["example"], labels["label"]) if int(e) in gold]
    accuracy = np.mean([y == g for y, g in pairs]) if pairs else float("nan")
    algorithm = run["config"]["search"].get("algorithm", "icl")
    print(f"run {run_id} ({algorithm}, {store.dataset_task(run['dataset_id'])['name']}): {len(labels)} labeled, "
          f"agreement with gold {accuracy:.3f}, share True {labels['label'].mean():.2f}, {len(events)} events, "
          f"wall {wall:.0f} s (first to last event; the model load and, for scalable, reading hidden states come before)")
    return run["dataset_id"], {store.load_examples(run["dataset_id"])[int(e)].uid: int(y)
                               for e, y in zip(labels["example"], labels["label"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--runs", type=int, nargs="+", required=True)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of head self-labeling")
    parser.add_argument("--zero-shot-steps", type=int, default=0,
                        help="also run the last run's scalable search from the model's zero-shot reading for this "
                             "many steps (0: not)")
    args = parser.parse_args()
    with Store.existing(args.db) as store:
        described = [describe(store, run_id) for run_id in args.runs]
        stored = load_run(store, args.runs[-1])
        gold_map = store.load_gold(stored.run["dataset_id"])
    config = RunConfig.from_dict(stored.run["config"])
    examples, task = stored.examples, stored.task
    gold = np.array([gold_map[i] for i in range(len(examples))])
    backend = load_model(ModelConfig(name=config.model.name))
    learner = HeadLearner(backend, task, config.learner if config.search.algorithm == "scalable" else LearnerConfig())
    began = time.perf_counter()
    prepared = learner.prepare(examples)
    print(f"baselines on all {len(examples)} examples of run {args.runs[-1]}'s dataset "
          f"(hidden states read in {time.perf_counter() - began:.0f} s):")
    context = prepared.extra.get("context", [])
    if context:  # the learner reads after demonstrations: the bare query's reading too, as zero-shot prompting asks
        began = time.perf_counter()
        bare = decide(learner.prepare(examples, context=[]).prior, "centered")
        print(f"  zero-shot prompting, the bare query (centered): {np.mean(bare == gold):.3f}, share True {bare.mean():.2f} "
              f"({time.perf_counter() - began:.0f} s)")
    labels = decide(prepared.prior, "centered")
    print(f"  zero-shot labels (centered) read after {len(context)} demonstrations labeled by the model's own "
          f"zero-shot reading: {np.mean(labels == gold):.3f}, share True {labels.mean():.2f}")
    every = np.arange(len(examples))
    for round_number in range(1, args.rounds + 1):
        trained = learner.fit(prepared, every, labels)
        logp = trained.label_logprobs(prepared, every)
        labels = decide(logp[:, 1] - logp[:, 0], "centered")
        print(f"  head self-labeling, round {round_number}: {np.mean(labels == gold):.3f}, share True {labels.mean():.2f}")
    if args.zero_shot_steps:
        began = time.perf_counter()
        search = ScalableSearch(PreparedFolds(learner, prepared, seed=config.search.seed), examples, task.rule,
                                replace(config.search, init_run=0, steps=args.zero_shot_steps))
        while not search.done:
            search.step()
        found = np.array([search.labels[i].label for i in range(len(examples))])
        print(f"  scalable ICM from the zero-shot reading ({search.iteration} steps, {time.perf_counter() - began:.0f} s): "
              f"{np.mean(found == gold):.3f}, share True {found.mean():.2f}")
    coin = np.asarray(random_labels(len(examples), 0))
    print(f"  random labels: {np.mean(coin == gold):.3f}")
    del described


if __name__ == "__main__":
    main()
