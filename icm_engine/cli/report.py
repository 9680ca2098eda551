"""`icm report`: one run's summary (acceptance, cost per step against |D|, gold audit), optionally
with prompting baselines from its model."""
from __future__ import annotations

from .options import add_db_option, load_backend


def add_parser(subparsers) -> None:
    report = subparsers.add_parser("report", help="a run's summary: acceptance, cost per step against |D|, gold audit")
    add_db_option(report)
    report.add_argument("--run", type=int, required=True)
    report.add_argument("--baselines", action="store_true",
                        help="also load the run's model and report zero-shot and k-shot gold-demo accuracy (audit only)")
    report.add_argument("--shots", type=int, default=8)


def run(args) -> int:
    from ..evaluation.run_report import summarize_run
    from ..store.database import Store

    if args.shots < 0:  # refused before the model loads, not by numpy after
        raise SystemExit(f"icm report: --shots is how many gold demonstrations to show, 0 or more; got {args.shots}")
    with Store.existing(args.db) as store:
        print(summarize_run(store, args.run))
        if args.baselines:
            from ..core.config import RunConfig
            from ..evaluation.run_report import prompting_baselines

            backend = load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
            result = prompting_baselines(store, args.run, backend, shots=args.shots)
            if result is None:
                print("no gold labels: no baselines")
            else:
                print(f"audit only, on all {result['n']} examples of the run's dataset (argmax of the two label "
                      f"words' renormalized probabilities): zero-shot accuracy {result['zero_shot']:.3f} "
                      f"(says True {result['share_true_zero_shot']:.0%}), {args.shots}-shot with gold demonstrations "
                      f"from other groups {result[f'{args.shots}_shot_gold']:.3f}")
    return 0
