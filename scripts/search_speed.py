"""Where an in-context search's time goes, and what it labels: the search `icm eval` runs, step by step.

For each seed: the default search (or the settings given) over the search split `icm eval` draws
(same data, sizes and split seed: the same search as its icm row), wall time, tokens forwarded and read from the prefix store, and
time and tokens per kind of step: additions, relabels (with the relabeled example's place in the
demonstration order), proposals equal to the current label, the final pass. Then label accuracy
against gold (read only to score) and peak memory. The numbers behind docs/speed.md's "A whole search".

    OMP_NUM_THREADS=2 .venv/bin/python scripts/search_speed.py --search-size 64 --seeds 0 1 2
    OMP_NUM_THREADS=2 .venv/bin/python scripts/search_speed.py --search-size 32 --seeds 0 --set objective=sum calibration=none
"""
from __future__ import annotations

import argparse
import collections
import resource
import time
from dataclasses import fields, replace

import numpy as np

from icm_engine.core.config import ModelConfig, RunConfig, SearchConfig
from icm_engine.core.search import Search
from icm_engine.data.datasets import load_any
from icm_engine.evaluation.comparison import split_by_group
from icm_engine.runs.models import load_model
from icm_engine.runs.runner import make_scorer


def parse_settings(pairs: list[str]) -> dict:
    kinds = {f.name: type(getattr(SearchConfig(), f.name)) for f in fields(SearchConfig)}
    settings = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        kind = kinds[name]
        settings[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return settings


def kind_of(record) -> str:
    if record.kind != "propose":
        return record.kind
    if record.proposed_label is None or record.proposed_label == record.old_label:
        return "same label"
    return "addition" if record.old_label is None else "relabel"


def run_seed(backend, task, examples, gold, config: SearchConfig, remember: bool = True) -> dict:
    scorer = make_scorer(backend, task, examples, RunConfig(task=task.name, dataset="speed", search=config))
    scorer.remember = scorer.remember if remember else 0
    search = Search(scorer, config)
    cost = collections.defaultdict(lambda: [0, 0, 0, 0.0, 0, 0])  # steps, accepted, tokens, seconds, reused, remembered
    places = []
    started = time.perf_counter()
    while not search.done:
        order = search.order() if search.initialized else []
        before, hits = backend.stats.snapshot(), scorer.remembered_hits
        record = search.step()
        kind = kind_of(record)
        used = backend.stats.since(before)
        entry = cost[kind]
        entry[0] += 1
        entry[1] += bool(record.accepted)
        entry[2] += used.tokens_forwarded
        entry[3] += record.seconds
        entry[4] += used.tokens_reused
        entry[5] += scorer.remembered_hits - hits
        if record.iteration % 50 == 0 or search.done:
            print(f"    step {record.iteration}: {len(search.labels)} labeled, {time.perf_counter() - started:.0f} s; "
                  + ", ".join(f"{k} {v[0]} ({v[3]:.0f} s)" for k, v in cost.items()), flush=True)
        if kind == "relabel":
            places.append((order.index(record.example), len(order), record.accepted, round(record.seconds, 1)))
    wall = time.perf_counter() - started
    labels = search.label_map()
    accuracy = float(np.mean([labels[i] == gold[i] for i in range(len(examples))]))
    return {"wall": wall, "cost": dict(cost), "places": places, "accuracy": accuracy, "steps": search.iteration,
            "labeled_by_search": search.labeled_by_search, "answered": scorer.answered_prompts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shared:yelp")
    parser.add_argument("--task", default="sentiment_single")
    parser.add_argument("--search-size", type=int, default=64)
    parser.add_argument("--test-size", type=int, default=200, help="only to draw the same split as icm eval")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None,
                        help="groups read from the data (default: search + test, as icm eval reads them; 0: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="search settings to change")
    parser.add_argument("--model", default=ModelConfig().name)
    parser.add_argument("--no-memory", action="store_true", help="score every labeled set anew (as before the "
                        "scorer remembered evaluations)")
    parser.add_argument("--places", action="store_true", help="print every relabel's place in the order")
    args = parser.parse_args()

    limit = args.search_size + args.test_size if args.limit is None else args.limit or None
    dataset = load_any(args.data, task=args.task, limit=limit)  # as icm eval: the same split, the same search
    split = split_by_group(dataset.examples, args.search_size, args.test_size, args.split_seed)
    examples = [dataset.examples[i] for i in split.search]
    gold = [int(dataset.gold[i]) for i in split.search]  # to score only
    loading = time.perf_counter()
    backend = load_model(ModelConfig(name=args.model), lambda message, fraction: None)
    print(f"model {backend.name} loaded in {time.perf_counter() - loading:.0f} s; {len(examples)} examples "
          f"of {args.data}, settings changed: {args.set or 'none (defaults)'}")
    base = replace(SearchConfig(), final_pass=True, **parse_settings(args.set))
    results = []
    for seed in args.seeds:
        result = run_seed(backend, dataset.task, examples, gold, replace(base, seed=seed), not args.no_memory)
        results.append(result)
        print(f"seed {seed}: {result['wall']:.0f} s, label accuracy {result['accuracy']:.3f}, {result['steps']} steps, "
              f"{result['labeled_by_search']} labeled by the search, {result['answered']} prompts answered from memory")
        for kind, (steps, accepted, tokens, seconds, reused, remembered) in sorted(result["cost"].items(),
                                                                                  key=lambda kv: -kv[1][3]):
            served = reused / (reused + tokens) if reused + tokens else 0.0
            print(f"  {kind:12s} {steps:4d} steps ({accepted} accepted)  {tokens:>10,} tokens forwarded  "
                  f"{seconds:7.1f} s ({seconds / result['wall']:.0%})  store served {served:.0%}  "
                  f"{remembered} sets scored before")
        if args.places:
            print("  relabels (place in the order, labeled, accepted, seconds):", result["places"])
    walls = [r["wall"] for r in results]
    accuracies = [r["accuracy"] for r in results]
    print(f"\n{len(results)} seeds: wall {np.mean(walls):.0f} s mean ({', '.join(f'{w:.0f}' for w in walls)}); "
          f"label accuracy {np.mean(accuracies):.3f} +- {np.std(accuracies, ddof=1) if len(accuracies) > 1 else 0:.3f} "
          f"({', '.join(f'{a:.3f}' for a in accuracies)})")
    print(f"peak memory (max RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
