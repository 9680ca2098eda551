"""Tokens a search forwards under a tight prefix-store budget: plain LRU against holding the order.

Each budget is given in prompts: multiples of the size of one leave-one-out prompt of the search's
labeled set right after initialization (a step's working set is one such prompt per labeled
example). The same search runs twice from the same seed, once with the scorer's hold hint
(the default) and once without it (plain least recently used); the numbers they score are the
same, only the tokens forwarded differ. docs/speed.md, "Eviction", shows a measurement.

    python scripts/kv_eviction.py --model PATH --n 24 --steps 30 --budgets 1.5,3,8
"""
from __future__ import annotations

import argparse
import time

from icm_engine.backends.transformers_backend import memory
from icm_engine.core.config import ModelConfig, SearchConfig
from icm_engine.core.scoring import Scorer
from icm_engine.core.search import Search
from icm_engine.data.datasets import load_any
from icm_engine.runs.models import load_model


def forwarded(model: str, dataset, n: int, steps: int, budget_prompts: float, hold: bool) -> tuple[int, int, float]:
    """(tokens forwarded over the steps, evictions, seconds) of one search."""
    backend = load_model(ModelConfig(model, device="cpu"), progress=lambda *_: None)
    scorer = Scorer(backend, dataset.task, dataset.examples[:n])
    if not hold:
        scorer.hold = lambda order, labels: None  # plain least recently used
    search = Search(scorer, SearchConfig(seed=1, steps=steps, k_init=n // 2, alpha=1.0, stop="steps", final_pass=False))
    search.initialize()
    first = search.order()[0]
    prompt_tokens = sum(backend.count_tokens(s) for s in scorer.prompt(search.order(), search.label_map(), first)[0].segments)
    backend.cache_store.budget_bytes = int(budget_prompts * prompt_tokens * memory.kv_bytes_per_token(backend.model))
    before, started = backend.stats.snapshot(), time.perf_counter()
    while not search.done:
        search.step()
    return backend.stats.since(before).tokens_forwarded, backend.cache_store.evictions, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--data", default="sample:sentiment_yelp")
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--n", type=int, default=24, help="examples the search labels (it starts from n/2)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budgets", default="1.5,3,8", help="store budgets in prompts, comma-separated")
    args = parser.parse_args()
    dataset = load_any(args.data, task=args.task)
    for budget in (float(b) for b in args.budgets.split(",")):
        runs = {hold: forwarded(args.model, dataset, args.n, args.steps, budget, hold) for hold in (False, True)}
        (lru, lru_evictions, lru_s), (held, held_evictions, held_s) = runs[False], runs[True]
        print(f"n={args.n}, {args.steps} steps, budget {budget:g} prompts: LRU {lru:,} tokens ({lru_evictions} evictions, "
              f"{lru_s:.0f} s); holding the order {held:,} tokens ({held_evictions} evictions, {held_s:.0f} s): "
              f"{held / lru - 1:+.0%}", flush=True)


if __name__ == "__main__":
    main()
