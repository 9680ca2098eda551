"""How much a reading context helps the model read a task: label accuracy of the bare query against
the same query after k demonstrations of the same data, labeled three ways (the model's own zero-shot
reading, random labels, gold), on a sample of the shared sentiment data. Gold is read to score, and
in the third row as demonstration labels to show that their correctness hardly matters.

    .venv/bin/python scripts/reading_context.py --data shared:amazon --test 200 --context 8,32

Measured with Gemma 3 270M (docs/scalable.md, "The reading context").
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from icm_engine.backends.base import LabelQuery
from icm_engine.core.config import ModelConfig
from icm_engine.core.prompts import demo_prefix
from icm_engine.data.datasets import load_any
from icm_engine.evaluation.baselines import decide
from icm_engine.runs.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="shared:amazon")
    parser.add_argument("--task", default="sentiment_single")
    parser.add_argument("--test", type=int, default=200, help="examples scored")
    parser.add_argument("--context", default="8,32", help="comma list of demonstration counts")
    parser.add_argument("--model", default=ModelConfig().name)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dataset = load_any(args.data, args.task)
    examples, task = dataset.examples, dataset.task
    gold = np.array([dataset.gold[i] for i in range(len(examples))])
    backend = load_model(ModelConfig(name=args.model))
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(examples))
    tests, pool = order[:args.test], order[args.test:]

    def read(prefix: tuple[str, ...], indices) -> np.ndarray:
        queries = [LabelQuery(prefix + (task.render_query(examples[i]),), task.label_words) for i in indices]
        raw = np.concatenate([backend.label_logprobs(queries[s:s + 64]) for s in range(0, len(queries), 64)])
        return raw[:, 1] - raw[:, 0]

    began = time.perf_counter()
    bare = read((), tests)
    print(f"bare query: {np.mean(decide(bare, 'centered') == gold[tests]):.3f} centered, "
          f"{np.mean(decide(bare, 'argmax') == gold[tests]):.3f} argmax ({time.perf_counter() - began:.0f} s)")
    for k in (int(c) for c in args.context.split(",")):
        demos = pool[:k]
        own = decide(read((), demos), "centered")
        for name, labels in (("zero-shot labels", own), ("random labels", rng.integers(0, 2, k)), ("gold labels", gold[demos])):
            began = time.perf_counter()
            log_odds = read(demo_prefix(task, [examples[i] for i in demos], [int(y) for y in labels]), tests)
            print(f"after {k} demonstrations, {name} ({np.mean(labels == gold[demos]):.2f} right): "
                  f"{np.mean(decide(log_odds, 'centered') == gold[tests]):.3f} centered, "
                  f"{np.mean(decide(log_odds, 'argmax') == gold[tests]):.3f} argmax ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
