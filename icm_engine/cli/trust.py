"""`icm trust`: can a run's labels be trusted? Every check of evaluation/trust.py, as text and HTML."""
from __future__ import annotations

from pathlib import Path

from .options import add_db_option, load_backend, write_atomically


def add_parser(subparsers) -> None:
    trust = subparsers.add_parser("trust", help="can these labels be trusted? polarity, balance, doubtful examples, "
                                                "salience, seeds")
    add_db_option(trust)
    trust.add_argument("--run", type=int, required=True)
    trust.add_argument("--runs", default=None, metavar="IDS",
                       help="comma-separated runs to compare seeds with (default: finished runs of the same dataset "
                            "and settings apart from the seed)")
    trust.add_argument("--no-model", action="store_true",
                       help="do not load the run's model: skip polarity, the content-free prior and the zero-shot share")
    trust.add_argument("--self-labeling", action="store_true",
                       help="also compare with iterated self-labeling (costs a few evaluations of the whole dataset)")
    trust.add_argument("--out", default=None, help="also write a self-contained HTML report here")


def run(args) -> int:
    from ..core.config import RunConfig
    from ..evaluation.trust import diagnose
    from ..evaluation.trust_report import summary_lines, to_html
    from ..store.database import Store

    try:
        seeds = None if args.runs is None else [int(r) for r in args.runs.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"icm trust: --runs takes run ids separated by commas, got {args.runs!r}") from None
    with Store.existing(args.db) as store:
        backend = None if args.no_model else load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        report = diagnose(store, args.run, backend, seed_run_ids=seeds, self_labeling=args.self_labeling, log=print)
    print("\n".join(summary_lines(report)))
    if args.out:
        try:
            write_atomically(Path(args.out), to_html(report).encode("utf-8"))
        except OSError as error:
            raise SystemExit(f"icm trust: cannot write {args.out}: {error.strerror or error}") from None
        print(f"wrote {args.out}")
    return 0
