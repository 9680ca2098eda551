"""`icm`: run, resume and export searches from the shell; start the app. A thin layer over the engine."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_DB = os.environ.get("ICM_STUDIO_DB", "runs/icm.duckdb")


def _add_search_options(parser: argparse.ArgumentParser) -> None:
    """One flag per SearchConfig field, with its declared help; unset flags (None) take the preset's value."""
    from .config import PRESETS, SEARCH_CHOICES, SEARCH_HELP, SearchConfig

    defaults = SearchConfig()
    group = parser.add_argument_group("search (defaults: README, 'Choosing the objective'; the paper's with --preset paper)")
    group.add_argument("--preset", choices=tuple(PRESETS), default="default",
                       help="named settings to start from; flags given here override them")
    for field in dataclasses.fields(SearchConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        help_text = f"{SEARCH_HELP[field.name]} (default {default})"
        if isinstance(default, bool):
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif field.name in SEARCH_CHOICES:
            group.add_argument(flag, dest=field.name, choices=SEARCH_CHOICES[field.name], default=None, help=help_text)
        else:
            group.add_argument(flag, dest=field.name, type=type(default), default=None, help=help_text)
    group.add_argument("--no-consistency", dest="use_consistency", action="store_false",
                       help="the paper's ablation: no I(D), no fixes (same as --no-use-consistency)")


def _given_search_settings(args) -> dict:
    from .config import SearchConfig

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig) if getattr(args, f.name, None) is not None}


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model flags every model-loading command shares (run, eval, bench)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="gemma3-270m", help="bundled name (gemma3-270m, smollm2-135m), local path, cached HF id, "
                       "or an inference server as ENGINE+URL::MODEL, e.g. vllm+http://gpu-box:8000/v1::meta-llama/Llama-3.1-70B")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    group.add_argument("--quantization", default="auto", choices=["auto", "nf4", "none"])
    group.add_argument("--max-context", type=int, default=None,
                       help="cap on prompt tokens (a llama-cpp-python server: the n_ctx it was started with)")
    server = parser.add_argument_group("inference server (instead of a local model; README, 'Serving a large model')")
    server.add_argument("--server-url", default=None, metavar="URL",
                        help="an OpenAI-compatible server's root, e.g. http://gpu-box:8000/v1 (vLLM, SGLang, llama.cpp, "
                             "llama-cpp-python); same as --model ENGINE+URL::MODEL")
    server.add_argument("--server-model", default=None, metavar="NAME", help="the model name the server serves (its /v1/models id)")
    server.add_argument("--server-engine", default="openai", choices=["openai", "vllm", "sglang", "llamacpp", "llama-cpp-python"],
                        help="which engine serves (default openai: ask the server)")
    server.add_argument("--server-concurrency", type=int, default=None, metavar="N",
                        help="requests in flight (default 16; 1 for llama-cpp-python, which runs one at a time)")


def apply_server_options(args) -> None:
    """--server-url/--server-model become the model spec ENGINE+URL::MODEL, which the run stores as its model."""
    url, model = getattr(args, "server_url", None), getattr(args, "server_model", None)
    if getattr(args, "server_concurrency", None) is not None:
        if args.server_concurrency < 1:
            raise SystemExit("icm: --server-concurrency must be at least 1")
        from .backends.openai_server import CONCURRENCY_ENV

        os.environ[CONCURRENCY_ENV] = str(args.server_concurrency)
    if url is None and model is None:
        return
    if not url or not model:
        raise SystemExit("icm: --server-url and --server-model go together (the server's URL and the model name it serves)")
    from .backends.server_protocol import make_server_spec

    args.model = make_server_spec(url, model, args.server_engine)


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

    final = sub.add_parser("finalize", help="label what a run's search left (argmax given its labeled set), recorded as a step")
    final.add_argument("--db", default=DEFAULT_DB)
    final.add_argument("--run", type=int, required=True)
    add_model_options(final)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--db", default=DEFAULT_DB)

    report = sub.add_parser("report", help="a run's summary: acceptance, cost per step against |D|, gold audit")
    report.add_argument("--db", default=DEFAULT_DB)
    report.add_argument("--run", type=int, required=True)
    report.add_argument("--baselines", action="store_true",
                        help="also load the run's model and report zero-shot and k-shot gold-demo accuracy (audit only)")
    report.add_argument("--shots", type=int, default=8)

    trust = sub.add_parser("trust", help="can these labels be trusted? polarity, balance, doubtful examples, salience, seeds")
    trust.add_argument("--db", default=DEFAULT_DB)
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

    sub.add_parser("models", help="list bundled models")

    from . import bench, eval_cli

    bench.add_arguments(sub.add_parser("bench", help="naive vs fast exact scorer: tokens, seconds, |dU|, memory"))
    eval_cli.add_parser(sub)
    eval_cli.add_show_parser(sub)

    app = sub.add_parser("app", help="start the Streamlit studio")
    app.add_argument("--db", default=DEFAULT_DB)
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--host", default="localhost",
                     help="address to serve on (default localhost: this machine only). The studio has no "
                          "login and can start model runs and write the database: serve it wider only on a "
                          "network you trust")
    return parser


def _search_config(args):
    from .config import preset

    try:
        return preset(args.preset, **_given_search_settings(args))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"icm run: {error}") from None


def _load_backend(model_config):
    from .models import load_model

    try:
        return load_model(
            model_config.name, device=model_config.device, dtype=model_config.dtype,
            quantization=model_config.quantization, max_context=model_config.max_context,
        )
    except (ValueError, OSError) as error:  # unknown name, a folder that holds no model
        raise SystemExit(f"icm: {error}") from None


def read_dataset(spec: str, task: str | None, limit: int | None):
    """The examples of `spec`, or a one-line refusal naming the file, line or row, and column."""
    from .datasets import load_any

    try:
        return load_any(spec, task=task, limit=limit)
    except FileNotFoundError:
        raise SystemExit(f"icm: {spec}: no such file") from None
    except (ValueError, KeyError, OSError) as error:  # DatasetError is a ValueError
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise SystemExit(f"icm: {spec}: {message}") from None


def _check_fits(backend, loaded, config, spec: str) -> None:
    from .runner import make_scorer
    from .scoring import ContextOverflowError

    try:
        make_scorer(backend, loaded.task, loaded.examples, config).check_fits()
    except ContextOverflowError as error:
        raise SystemExit(f"icm: {spec}: {error}") from None


def ensure_dataset(store, spec: str, task: str | None, limit: int | None, loaded=None) -> int:
    """Load a dataset into the store (or store `loaded`, read from `spec` already), reusing an
    identical earlier load."""
    loaded = loaded or read_dataset(spec, task, limit)
    # identified by content, not by path: a file edited in place is a new dataset
    source = f"{spec}|limit={limit}|task={loaded.task.name}"
    return store.add_dataset(loaded.name, loaded.task.to_dict(), loaded.examples, loaded.gold, source=source,
                             reuse=True)


def cmd_run(args) -> int:
    from tqdm import tqdm

    from .audit import gold_agreement
    from .config import ModelConfig, RunConfig
    from .runner import advance, create_run, extend, open_search
    from .store import Store

    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    with Store(args.db) as store:
        if args.resume is not None:
            run_info = store.run(args.resume)
            config = RunConfig.from_dict(run_info["config"])
            _refuse_changed_settings(args, config)
            run_id = args.resume
        else:
            model_config = ModelConfig(args.model, args.device, args.dtype, args.quantization, args.max_context)
            loaded = read_dataset(args.data, args.task, args.limit)  # bad data fails before the slow model load
            config = RunConfig(task=loaded.task.name, dataset=args.data, search=_search_config(args), model=model_config)
        backend = _load_backend(config.model)
        if args.resume is None:  # stored only now: a model that fails to load leaves no orphaned dataset
            _check_fits(backend, loaded, config, args.data)
            dataset_id = ensure_dataset(store, args.data, args.task, args.limit, loaded)
            run_id = create_run(store, dataset_id, config, backend, name=args.name)
        search = open_search(store, run_id, backend, steps=args.steps if args.resume is not None else None)
        if args.resume is not None and args.steps is not None and search.stopped and args.steps > search.iteration:
            # the run had stopped by its own rule: --steps asks for more, so continue to that total
            extend(store, run_id, search, args.steps - search.iteration)
        total = search.config.steps + 1  # the cap: a run that stops by "labeled" ends sooner
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
        _print_outcome(run_id, search)
        agreement = gold_agreement(store, run_id)
        if agreement and agreement["accuracy"] is not None:
            print(f"audit only (gold never used by the search): agreement with gold {agreement['accuracy']:.3f} on {agreement['n']} labeled")
    return 0


def _refuse_changed_settings(args, config) -> None:
    """--resume continues a run with the settings it started with: a flag that asks for another
    value (other than --steps) is an error, not silently ignored."""
    stored = dataclasses.asdict(config.search)
    changed = [f"--{name.replace('_', '-')} {value} (run: {stored[name]})"
               for name, value in _given_search_settings(args).items() if name != "steps" and value != stored[name]]
    model = dict(dataclasses.asdict(config.model), model=config.model.name)
    changed += [f"--{name.replace('_', '-')} {getattr(args, name)} (run: {model[name]})"
                for name in ("model", "device", "dtype", "quantization", "max_context")
                if getattr(args, name) != model[name] and getattr(args, name) not in (None, "auto", "gemma3-270m")]
    changed += [f"--{flag} {value} (run: {config.dataset})" for flag, value in (("data", args.data), ("limit", args.limit), ("task", args.task))
                if value not in (None, "sample:sentiment_yelp", config.dataset)]
    if args.preset != "default":
        changed.append(f"--preset {args.preset}")
    if changed:
        raise SystemExit(f"icm run --resume {args.resume}: a run keeps the settings it started with; only --steps may "
                         f"change (got {'; '.join(changed)}). Change alpha or T0 by steering in the studio, or start a new run.")


def _print_outcome(run_id: int, search) -> None:
    labels = search.label_map()
    active = len(search.active())
    searched = search.labeled_by_search
    reached = search.progress.labeled_at
    print(f"run {run_id} stopped at iteration {search.iteration}: {len(labels)} of {active} examples labeled "
          f"({searched} by the search itself, {len(labels) - searched} by the final pass; "
          f"{len(search.excluded)} excluded); {sum(labels.values())} True / {len(labels) - sum(labels.values())} False")
    if reached is not None:
        print(f"the search itself had labeled every example at iteration {reached} "
              f"({reached / max(active, 1):.2f} iterations per example)")


def cmd_finalize(args) -> int:
    """Run the final pass now: label what the search left, given its labeled set (recorded as a step)."""
    from .config import RunConfig
    from .runner import finalize, open_search
    from .store import Store

    with Store.existing(args.db, read_only=False) as store:
        backend = _load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        search = open_search(store, args.run, backend)
        if not search.initialized:
            raise SystemExit(f"run {args.run} has no step yet: start it first (icm run --resume {args.run})")
        left = len(search.unlabeled())
        print(f"run {args.run}: final pass over {left} unlabeled examples, given {len(search.labels)} labeled ones")
        finalize(store, args.run, search)
        _print_outcome(args.run, search)
    return 0


def cmd_export(args) -> int:
    from .export import export
    from .store import Store

    out = Path(args.out)
    if out.is_dir():
        raise SystemExit(f"icm export: --out {out} is a folder; name a file in it (e.g. {out / 'labels.csv'})")
    with Store.existing(args.db) as store:
        data = export(store, args.run, args.format)
    try:
        write_atomically(out, data)
    except OSError as error:
        raise SystemExit(f"icm export: cannot write {out}: {error.strerror or error}") from None
    print(f"wrote {out} ({len(data)} bytes)")
    return 0


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it: an interrupted export leaves
    the old file whole (a rename within a folder is atomic), never a truncated one."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def cmd_runs(args) -> int:
    from .store import Store

    with Store.existing(args.db) as store:
        frame = store.runs()
    shown = ["run_id", "name", "dataset_name", "status", "last_iteration", "updated_at", "error"]
    print(frame[shown].to_string(index=False) if len(frame) else "no runs yet")
    return 0


def cmd_report(args) -> int:
    from .report import summarize_run
    from .store import Store

    with Store.existing(args.db) as store:
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


def cmd_trust(args) -> int:
    from .config import RunConfig
    from .store import Store
    from .trust import diagnose
    from .trust_report import summary_lines, to_html

    try:
        seeds = None if args.runs is None else [int(r) for r in args.runs.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"icm trust: --runs takes run ids separated by commas, got {args.runs!r}") from None
    with Store.existing(args.db) as store:
        backend = None if args.no_model else _load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        report = diagnose(store, args.run, backend, seed_run_ids=seeds, self_labeling=args.self_labeling, log=print,
                          ccs=not args.no_ccs)
        if args.export_baselines:
            from .baseline_export import report_exports

            files = report_exports(store, report, args.baseline_format)
    print("\n".join(summary_lines(report)))
    if args.export_baselines:
        if not files:
            print("no baselines to export (they need the model: drop --no-model)")
        for name, data in files.items():
            try:
                write_atomically(Path(args.export_baselines) / name, data)
            except OSError as error:
                raise SystemExit(f"icm trust: cannot write {Path(args.export_baselines) / name}: "
                                 f"{error.strerror or error}") from None
            print(f"wrote {Path(args.export_baselines) / name} ({len(data)} bytes)")
    if args.out:
        try:
            write_atomically(Path(args.out), to_html(report).encode("utf-8"))
        except OSError as error:
            raise SystemExit(f"icm trust: cannot write {args.out}: {error.strerror or error}") from None
        print(f"wrote {args.out}")
    return 0


def cmd_models(args) -> int:
    from .models import list_bundled_models

    for name, description in list_bundled_models().items():
        print(f"{name:16s} {description}")
    return 0


def cmd_app(args) -> int:
    home = Path(__file__).resolve().parent.parent / "app" / "Home.py"
    env = dict(os.environ, ICM_STUDIO_DB=str(Path(args.db).resolve()))
    if args.host not in LOCAL_HOSTS:
        print(f"warning: serving ICM Studio on {args.host}:{args.port}: anyone who can reach it can start runs "
              f"and change the database (there is no login)", file=sys.stderr)
    return subprocess.call(app_command(home, args.host, args.port), env=env, cwd=str(home.parent.parent))


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
UPLOAD_LIMIT_MB = 200  # larger tables load through `icm run --data PATH`


def app_command(home: Path, host: str, port: int) -> list[str]:
    """The streamlit command line. The safety settings are passed here, not only in the checkout's
    .streamlit/config.toml, which Streamlit reads only when started from the checkout: an installed
    package would otherwise serve on every interface."""
    return [sys.executable, "-m", "streamlit", "run", str(home), "--server.address", host, "--server.port", str(port),
            "--server.maxUploadSize", str(UPLOAD_LIMIT_MB), "--server.headless", "true",
            "--browser.gatherUsageStats", "false"]


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

    from .store import StoreError

    handlers = {"run": cmd_run, "finalize": cmd_finalize, "export": cmd_export, "runs": cmd_runs, "report": cmd_report, "trust": cmd_trust, "models": cmd_models, "app": cmd_app,
                "bench": bench.run, "eval": eval_cli.run, "evals": eval_cli.show}
    try:
        apply_server_options(args)
        return handlers[args.command](args)
    except StoreError as error:  # a missing, locked, foreign or newer database: one line, not a traceback
        return _fail(f"icm {args.command}: {error} (default database: {DEFAULT_DB})")
    except SystemExit as stop:  # a command's own refusal, already worded for the user
        if isinstance(stop.code, str):
            return _fail(stop.code)
        raise


def _fail(message: str) -> int:
    """A user error: one line on stderr and exit status 2 (argparse's, for the same kind of mistake)."""
    print(message, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
