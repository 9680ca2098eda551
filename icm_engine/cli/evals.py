"""`icm evals`: list stored evaluations, or print one's tables (also one cut short: its finished seeds)."""
from __future__ import annotations

from .options import add_db_option


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evals", help="list stored evaluations, or print the tables of one (--eval N)")
    add_db_option(parser)
    parser.add_argument("--eval", type=int, default=None, help="the evaluation whose tables to print")


def run(args) -> int:
    import json

    from ..evaluation.comparison_tables import format_label_table, format_table, summarize, summarize_labels
    from ..store.database import Store

    with Store.existing(args.db) as store:
        evals = store.evals()
        if args.eval is None:
            print(evals[["eval_id", "name", "created_at", "n_rows"]].to_string(index=False) if len(evals) else "no evaluations")
            return 0
        if args.eval not in set(evals["eval_id"]):
            raise SystemExit(f"{args.db} has no evaluation {args.eval}")
        rows = store.eval_rows(args.eval)
        config = json.loads(evals[evals["eval_id"] == args.eval]["config_json"].iloc[0])
    done = config.get("seeds_done", config.get("seeds"))
    print(f"evaluation {args.eval}: task {config['task']}, seeds done {done} of {config.get('seeds')}"
          f"{'' if config.get('complete', True) else ' (cut short: the finished seeds only)'}")
    labels = summarize_labels(rows)
    if len(labels):
        print("\nlabel table (mean ± std over seeds):")
        print(format_label_table(labels))
    print(f"\ntest table ({config.get('n_demos', '?')} demonstrations):")
    print(format_table(summarize(rows)))
    return 0
