"""`icm trust`: can a run's labels be trusted? Every check of evaluation/trust.py, as text and HTML."""
from __future__ import annotations

from pathlib import Path

from .options import add_db_option, load_backend, write_atomically
from .progress import Progress


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
    trust.add_argument("--no-ccs", action="store_true",
                       help="skip the CCS probe baseline (hidden states of each example's two contrast prompts)")
    trust.add_argument("--out", default=None, help="also write a self-contained HTML report here")
    trust.add_argument("--export-baselines", default=None, metavar="DIR",
                       help="write each baseline's labels into this folder, one file per baseline, like `icm export`")
    trust.add_argument("--baseline-format", default="csv", choices=["csv", "sft"],
                       help="format of --export-baselines files (default csv)")


def run(args) -> int:
    from ..core.config import RunConfig
    from ..evaluation.baseline_export import report_exports
    from ..evaluation.trust import diagnose
    from ..evaluation.trust_report import summary_lines, to_html
    from ..store.database import Store

    try:
        seeds = None if args.runs is None else [int(r) for r in args.runs.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"icm trust: --runs takes run ids separated by commas, got {args.runs!r}") from None
    with Store.existing(args.db) as store:
        backend = None if args.no_model else load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        with Progress() as progress:
            report = diagnose(store, args.run, backend, seed_run_ids=seeds, self_labeling=args.self_labeling,
                              log=progress.log, ccs=not args.no_ccs, progress=progress)
        files = report_exports(store, report, args.baseline_format) if args.export_baselines else {}
    print("\n".join(summary_lines(report)))
    if args.export_baselines:
        if not files:
            print("no baselines to export (they need the model: drop --no-model)")
        for name, data in files.items():
            target = Path(args.export_baselines) / name
            try:
                write_atomically(target, data)
            except OSError as error:
                raise SystemExit(f"icm trust: cannot write {target}: {error.strerror or error}") from None
            print(f"wrote {target} ({len(data)} bytes)")
    if args.out:
        try:
            write_atomically(Path(args.out), to_html(report).encode("utf-8"))
        except OSError as error:
            raise SystemExit(f"icm trust: cannot write {args.out}: {error.strerror or error}") from None
        print(f"wrote {args.out}")
    return 0
