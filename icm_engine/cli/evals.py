"""`icm evals`: list stored evaluations, print one's tables (also one cut short: its finished
seeds), or pool evaluations run apart (`--combine`, e.g. one seed per process or per file)."""
from __future__ import annotations

import json

from .options import add_db_option


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evals", help="list stored evaluations, print the tables of one (--eval N), "
                                                 "or pool several (--combine FILE ...)")
    add_db_option(parser)
    parser.add_argument("--eval", type=int, default=None, help="the evaluation whose tables to print")
    parser.add_argument("--combine", nargs="+", metavar="FILE", default=None,
                        help="databases whose evaluations (every one in each file) to pool into one set of tables; "
                             "they may differ in seeds and methods only")


def _print_tables(rows, n_demos) -> None:
    from ..evaluation.comparison_tables import format_label_table, format_table, summarize, summarize_labels

    labels = summarize_labels(rows)
    if len(labels):
        print("\nlabel table (mean ± std over seeds):")
        print(format_label_table(labels))
    print(f"\ntest table ({n_demos} demonstrations):")
    print(format_table(summarize(rows)))


def _combine(files: list[str]) -> int:
    from ..evaluation.combine import Part, combine
    from ..store.database import Store

    parts = []
    for path in files:
        with Store.existing(path) as store:
            evals = store.evals()
            if not len(evals):
                raise SystemExit(f"{path}: no evaluations")
            for eval_id, config_json in zip(evals["eval_id"], evals["config_json"]):
                parts.append(Part(f"{path} evaluation {eval_id}", json.loads(config_json), store.eval_rows(int(eval_id))))
    try:
        rows = combine(parts)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    seeds = sorted({int(s) for s in rows["seed"].dropna()})
    config = parts[0].config
    print(f"{len(parts)} evaluations from {len(files)} file{'s' * (len(files) != 1)}: task {config['task']}, "
          f"{config['search_size']} search {config.get('size_unit', 'groups')}, model "
          f"{(config.get('backend') or {}).get('name', config.get('model'))}, seeds {seeds}")
    _print_tables(rows, config.get("n_demos", "?"))
    return 0


def run(args) -> int:
    from ..store.database import Store

    if args.combine:
        return _combine(args.combine)
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
    _print_tables(rows, config.get("n_demos", "?"))
    return 0
