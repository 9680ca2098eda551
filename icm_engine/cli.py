"""`icm`: run, resume and export searches from the shell; start the app. A thin layer over the engine."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_DB = os.environ.get("ICM_STUDIO_DB", "runs/icm.duckdb")


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    from .config import CALIBRATIONS, SCORERS, SearchConfig

    defaults = SearchConfig()
    group = parser.add_argument_group("search (defaults: the paper's appendix D)")
    group.add_argument("--steps", type=int, default=None, help=f"search iterations after initialization (default {defaults.steps}; with --resume: the new total)")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--alpha", type=float, default=defaults.alpha)
    group.add_argument("--t0", type=float, default=defaults.t0)
    group.add_argument("--t-min", type=float, default=defaults.t_min)
    group.add_argument("--beta", type=float, default=defaults.beta)
    group.add_argument("--k-init", type=int, default=defaults.k_init)
    group.add_argument("--max-fix-iters", type=int, default=defaults.max_fix_iters)
    group.add_argument("--calibration", choices=CALIBRATIONS, default=defaults.calibration)
    group.add_argument("--scorer", choices=SCORERS, default=defaults.scorer)
    group.add_argument("--no-consistency", action="store_true", help="the paper's ablation: no I(D), no fixes")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model flags every model-loading command shares (run, eval, bench)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="gemma3-270m", help="bundled name (gemma3-270m, smollm2-135m), local path or cached HF id")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    group.add_argument("--quantization", default="auto", choices=["auto", "nf4", "none"])
    group.add_argument("--max-context", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icm", description="ICM Studio: unsupervised label elicitation")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start (or resume) a search; every step is written to the database")
    run.add_argument("--data", default="sample:sentiment_yelp", help="sample:NAME, shared:NAME or a CSV/JSONL/Parquet path")
    run.add_argument("--task", default=None, help="task name (default: the dataset's own task)")
    run.add_argument("--limit", type=int, default=None, help="use only this many groups (questions, pairs, sentences)")
    run.add_argument("--db", default=DEFAULT_DB)
    run.add_argument("--name", default="")
    run.add_argument("--resume", type=int, default=None, metavar="RUN_ID", help="continue this run from its last step")
    run.add_argument("--print-steps", action="store_true", help="print one JSON line per committed step on stdout (for scripts)")
    _add_search_options(run)
    add_model_options(run)

    export = sub.add_parser("export", help="write a run's labels for fine-tuning")
    export.add_argument("--db", default=DEFAULT_DB)
    export.add_argument("--run", type=int, required=True)
    export.add_argument("--format", default="csv", choices=["csv", "sft", "preference", "provenance"])
    export.add_argument("--out", required=True)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--db", default=DEFAULT_DB)

    report = sub.add_parser("report", help="a run's summary: acceptance, cost per step against |D|, gold audit")
    report.add_argument("--db", default=DEFAULT_DB)
    report.add_argument("--run", type=int, required=True)
    report.add_argument("--baselines", action="store_true",
                        help="also load the run's model and report zero-shot and k-shot gold-demo accuracy (audit only)")
    report.add_argument("--shots", type=int, default=8)

    sub.add_parser("models", help="list bundled models")

    from . import bench, eval_cli

    bench.add_arguments(sub.add_parser("bench", help="naive vs fast exact scorer: tokens, seconds, |dU|, memory"))
    eval_cli.add_parser(sub)

    app = sub.add_parser("app", help="start the Streamlit studio")
    app.add_argument("--db", default=DEFAULT_DB)
    app.add_argument("--port", type=int, default=8501)
    return parser


def _search_config(args):
    from .config import SearchConfig

    return SearchConfig(
        alpha=args.alpha, t0=args.t0, t_min=args.t_min, beta=args.beta, k_init=args.k_init,
        steps=args.steps if args.steps is not None else SearchConfig().steps,
        seed=args.seed, max_fix_iters=args.max_fix_iters, calibration=args.calibration,
        use_consistency=not args.no_consistency, scorer=args.scorer,
    )


def _load_backend(model_config):
    from .models import load_model

    return load_model(
        model_config.name, device=model_config.device, dtype=model_config.dtype,
        quantization=model_config.quantization, max_context=model_config.max_context,
    )


def ensure_dataset(store, spec: str, task: str | None, limit: int | None) -> int:
    """Load a dataset into the store, reusing an identical earlier load."""
    from .datasets import load_any

    loaded = load_any(spec, task=task, limit=limit)
    source = f"{spec}|limit={limit}|task={loaded.task.name}"
    existing = store.datasets()
    if len(existing):
        same = existing[(existing["source"] == source) & (existing["n_examples"] == len(loaded.examples))]
        if len(same):
            return int(same["dataset_id"].iloc[0])
    return store.add_dataset(loaded.name, loaded.task.to_dict(), loaded.examples, loaded.gold, source=source)


def cmd_run(args) -> int:
    from tqdm import tqdm

    from .audit import gold_agreement
    from .config import ModelConfig, RunConfig
    from .runner import advance, create_run, open_search
    from .store import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    with Store(args.db) as store:
        if args.resume is not None:
            run_info = store.run(args.resume)
            config = RunConfig.from_dict(run_info["config"])
            run_id = args.resume
        else:
            model_config = ModelConfig(args.model, args.device, args.dtype, args.quantization, args.max_context)
            dataset_id = ensure_dataset(store, args.data, args.task, args.limit)
            task_name = store.dataset_task(dataset_id)["name"]
            config = RunConfig(task=task_name, dataset=args.data, search=_search_config(args), model=model_config)
        backend = _load_backend(config.model)
        if args.resume is None:
            run_id = create_run(store, dataset_id, config, backend, name=args.name)
        search = open_search(store, run_id, backend, steps=args.steps if args.resume is not None else None)
        total = search.config.steps + 1
        print(f"run {run_id}: {len(search.scorer.examples)} examples, task {config.task}, model {backend.name}, db {args.db}")
        with tqdm(total=total, initial=search.iteration + 1, unit="step", dynamic_ncols=True) as bar:
            def on_step(record):
                if args.print_steps:
                    print(json.dumps({"run_id": run_id, "iteration": record.iteration, "accepted": record.accepted,
                                      "labeled": record.labeled_count}), flush=True)
                bar.update(1)
                bar.set_postfix(T=f"{record.temperature or 0:.2f}", U=f"{record.u_after if record.accepted else record.u_before:.2f}",
                                labeled=record.labeled_count, acc="y" if record.accepted else "n")
            advance(store, run_id, search, on_step=on_step)
        labels = search.label_map()
        print(f"run {run_id} finished at iteration {search.iteration}: {len(labels)} labeled, "
              f"{sum(labels.values())} True / {len(labels) - sum(labels.values())} False")
        agreement = gold_agreement(store, run_id)
        if agreement and agreement["accuracy"] is not None:
            print(f"audit only (gold never used by the search): agreement with gold {agreement['accuracy']:.3f} on {agreement['n']} labeled")
    return 0


def cmd_export(args) -> int:
    from .export import export
    from .store import Store

    with Store(args.db) as store:
        data = export(store, args.run, args.format)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes)")
    return 0


def cmd_runs(args) -> int:
    from .store import Store

    with Store(args.db) as store:
        frame = store.runs()
    print(frame.to_string(index=False) if len(frame) else "no runs yet")
    return 0


def cmd_report(args) -> int:
    from .report import summarize_run
    from .store import Store

    with Store(args.db) as store:
        print(summarize_run(store, args.run))
        if args.baselines:
            from .config import RunConfig
            from .report import prompting_baselines

            backend = _load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
            result = prompting_baselines(store, args.run, backend, shots=args.shots)
            if result is None:
                print("no gold labels: no baselines")
            else:
                print(f"audit only, on all {result['n']} examples of the run's dataset (argmax of the two label "
                      f"words' renormalized probabilities): zero-shot accuracy {result['zero_shot']:.3f} "
                      f"(says True {result['share_true_zero_shot']:.0%}), {args.shots}-shot with gold demonstrations "
                      f"from other groups {result[f'{args.shots}_shot_gold']:.3f}")
    return 0


def cmd_models(args) -> int:
    from .models import list_bundled_models

    for name, description in list_bundled_models().items():
        print(f"{name:16s} {description}")
    return 0


def cmd_app(args) -> int:
    home = Path(__file__).resolve().parent.parent / "app" / "Home.py"
    env = dict(os.environ, ICM_STUDIO_DB=str(Path(args.db).resolve()))
    command = [sys.executable, "-m", "streamlit", "run", str(home), "--server.port", str(args.port)]
    return subprocess.call(command, env=env, cwd=str(home.parent.parent))


def use_huge_pages_for_tensors() -> None:
    """Ask torch's CPU allocator for transparent huge pages (read once, at torch's first large
    allocation, so before torch is imported). The fast scorer fills fresh key/value buffers of
    tens of MB per layer; with 4 KB pages the page faults alone cap those copies near 1.7 GB/s
    on our CI machines, with huge pages they run at memory speed. A user's setting wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    use_huge_pages_for_tensors()  # inherited by `icm app`'s streamlit process too
    args = build_parser().parse_args(argv)
    from . import bench, eval_cli

    handlers = {"run": cmd_run, "export": cmd_export, "runs": cmd_runs, "report": cmd_report, "models": cmd_models, "app": cmd_app,
                "bench": bench.run, "eval": eval_cli.run}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
