"""`icm models`: the bundled models, and the fine-tuned ones beside the database, one line each."""
from __future__ import annotations

from .options import add_db_option


def add_parser(subparsers) -> None:
    models = subparsers.add_parser("models", help="list bundled models and fine-tuned ones (icm finetune)")
    add_db_option(models)


def run(args) -> int:
    from ..learners.saved import finetuned_root
    from ..runs.finetune import finetuned_models
    from ..runs.models import list_bundled_models

    for name, description in list_bundled_models().items():
        print(f"{name:16s} {description}")
    tuned = finetuned_models(args.db)
    if tuned:
        print(f"\nfine-tuned ({finetuned_root(args.db)}):")
    for p in tuned:
        curve = p.get("loss_curve") or [float("nan")]
        run = f"run {p['run_id']}" if p.get("run_id") is not None else "labels"
        print(f"{p['id']:8s} {p['kind']:5s} on {p['model']['name']}, {run}'s {p['n_labels']} labels, "
              f"loss {curve[0]:.3f} -> {curve[-1]:.3f}, {p['seconds']:.0f} s, {p['created_at']}"
              + (f", iterative over {len(p['rounds']) + 1} batches" if p.get("iterative") else ""))
    return 0
