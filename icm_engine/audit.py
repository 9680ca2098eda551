"""Audit-only comparisons with gold labels. Never called by the search: gold stays out of it."""
from __future__ import annotations

from .store.database import Store


def gold_agreement(store: Store, run_id: int) -> dict | None:
    """Share of labeled examples whose label equals gold, or None if the dataset has no gold."""
    run = store.run(run_id)
    gold = store.load_gold(run["dataset_id"])
    if not gold:
        return None
    labels = store.labels(run_id)
    pairs = [(int(r.label), gold[int(r.example)]) for r in labels.itertuples(index=False) if int(r.example) in gold]
    if not pairs:
        return {"accuracy": None, "n": 0}
    correct = sum(label == truth for label, truth in pairs)
    return {"accuracy": correct / len(pairs), "n": len(pairs)}
