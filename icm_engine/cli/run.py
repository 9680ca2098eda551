"""`icm run`: start a search (or resume one) and write every step to the database."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..core.config import ModelConfig
from ..core.settings import settings
from .progress import Progress
from .options import (
    add_db_option, add_learner_options, add_model_options, add_search_options, given_search_settings, learner_config,
    load_backend, model_config, read_dataset, search_config,
)

DEFAULT_DATA = "sample:sentiment_yelp"


def add_parser(subparsers) -> None:
    run = subparsers.add_parser("run", help="start (or resume) a search; every step is written to the database")
    run.add_argument("--data", default=DEFAULT_DATA, help="sample:NAME, shared:NAME or a CSV/JSONL/Parquet path")
    run.add_argument("--task", default=None, help="task name (default: the dataset's own task)")
    run.add_argument("--limit", type=int, default=None, help="use only this many groups (questions, pairs, sentences)")
    add_db_option(run)
    run.add_argument("--name", default="")
    run.add_argument("--resume", type=int, default=None, metavar="RUN_ID", help="continue this run from its last step")
    run.add_argument("--replay", action="store_true",
                     help="with --resume: redo the run's stored steps first (as long as they took), checking each, so "
                          "that the scores after the restart are bit-identical to an uninterrupted run's")
    run.add_argument("--print-steps", action="store_true", help="print one JSON line per committed step on stdout (for scripts)")
    add_search_options(run)
    add_learner_options(run, "learner (with --algorithm scalable: what scores each fold)")
    add_model_options(run)


def ensure_dataset(store, spec: str, task: str | None, limit: int | None, loaded=None) -> int:
    """Load a dataset into the store (or store `loaded`, read from `spec` already), reusing an
    identical earlier load."""
    from ..data.datasets import dataset_source

    loaded = loaded or read_dataset(spec, task, limit)
    # identified by content, not by path: a file edited in place is a new dataset
    return store.add_dataset(loaded.name, loaded.task.to_dict(), loaded.examples, loaded.gold,
                             source=dataset_source(spec, limit, loaded.task.name), reuse=True)


def _check_fits(backend, loaded, config, spec: str) -> None:
    from ..core.scoring import ContextOverflowError
    from ..runs.runner import make_scorer

    try:
        make_scorer(backend, loaded.task, loaded.examples, config).check_fits()
    except ContextOverflowError as error:
        raise SystemExit(f"icm: {spec}: {error}") from None


def run(args) -> int:
    from ..evaluation.run_report import run_gold_agreement
    from ..runs.runner import advance, create_run, extend, open_search
    from ..store.database import Store

    if args.replay and args.resume is None:
        raise SystemExit("icm run: --replay redoes a stored run's steps; give it with --resume RUN_ID")
    # Everything the user gave is checked before the model loads (seconds to minutes), and nothing
    # is written until it has: a start that fails leaves no file, no dataset and no run behind.
    config, loaded = _checked_resume(args) if args.resume is not None else _checked_start(args)
    backend = load_backend(config.model)
    if args.resume is None and config.search.algorithm == "icl":  # a scalable run holds one example per prompt
        _check_fits(backend, loaded, config, args.data)
    if args.resume is None and config.search.batch_size:  # a group too long for one prompt: said before any write
        from .run_batches import check_plan

        check_plan(args, config, loaded, backend)
    with Store(args.db) as store:
        if config.search.batch_size:  # one search per batch under a parent run (runs/batches.py)
            from ..runs.batches import create_batched_run
            from .run_batches import run_batched

            parent = args.resume
            if parent is None:
                dataset_id = ensure_dataset(store, args.data, args.task, args.limit, loaded)
                parent = create_batched_run(store, dataset_id, config, backend, name=args.name)
            return run_batched(args, store, parent, backend)
        if args.resume is None:
            dataset_id = ensure_dataset(store, args.data, args.task, args.limit, loaded)
            run_id = create_run(store, dataset_id, config, backend, name=args.name)
        else:
            run_id = args.resume
        steps = args.steps if args.resume is not None else None
        if args.replay:
            search = replay_with_progress(store, run_id, backend, steps)
        else:
            search = open_search(store, run_id, backend, steps=steps, progress=Progress())
        if args.resume is not None and args.steps is not None and search.stopped and args.steps > search.iteration:
            # the run had stopped by its own rule: --steps asks for more, so continue to that total
            extend(store, run_id, search, args.steps - search.iteration)
        print(f"run {run_id}: {search.n_examples} examples, task {config.task}, model {backend.name}, db {args.db}")
        with Progress() as progress:
            def on_step(record):
                if args.print_steps:
                    print(json.dumps({"run_id": run_id, "iteration": record.iteration, "accepted": record.accepted,
                                      "labeled": record.labeled_count}), flush=True)
                phase, done, total = search.stop_progress()  # toward its own stop: labeling, then quiet steps
                u = record.u_after if record.accepted else record.u_before
                progress(done, total, f"run {run_id}: {phase}",
                         f"step {record.iteration}, T {record.temperature or 0:.2f}, U {u or 0:.2f}, "
                         f"{record.labeled_count} labeled, {'accepted' if record.accepted else 'rejected'}")
            advance(store, run_id, search, on_step=on_step)
        print_outcome(run_id, search)
        _refresh_parent(store, run_id)
        agreement = run_gold_agreement(store, run_id)
        if agreement and agreement["accuracy"] is not None:
            print(f"audit only (gold never used by the search): agreement with gold {agreement['accuracy']:.3f} on {agreement['n']} labeled")
    return 0


def _refresh_parent(store, run_id: int) -> None:
    """A batch run resumed on its own: its parent's labels follow (and it finishes with the last batch)."""
    from ..runs.batches import refresh_parent

    parent = refresh_parent(store, run_id)
    if parent is not None:
        print(f"batched run {parent}: {len(store.labels(parent))} examples labeled over its batches "
              f"({store.run(parent)['status']})")


def _checked_start(args):
    """A new run's config and data, every flag and the --db checked (nothing created)."""
    from ..core.config import RunConfig
    from ..store.database import Store

    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"icm run: --limit takes how many groups to use, at least 1; got {args.limit}")
    search, model, learner = search_config(args), model_config(args), learner_config(args)
    Store.check(args.db)  # a foreign, newer or locked file, a folder that cannot be made
    if search.init_run:
        _check_init_run(args.db, search.init_run)
    loaded = read_dataset(args.data, args.task, args.limit)
    return RunConfig(task=loaded.task.name, dataset=args.data, search=search, model=model, learner=learner), loaded


def _check_init_run(db: str, run_id: int) -> None:
    """The run a scalable run starts from must be in the same database."""
    from ..store.database import Store

    known = set()
    if Path(db).exists():
        with Store.existing(db) as store:
            known = set(store.runs()["run_id"])
    if run_id not in known:
        raise SystemExit(f"icm run: --init-run {run_id}: no such run in {db} (the run whose labels a scalable run "
                         "starts from)")


def _checked_resume(args):
    """The stored run's config, read without writing: a missing run or a changed setting is refused
    before the model loads and before an older file is upgraded."""
    from ..core.config import RunConfig
    from ..store.database import Store

    with Store.existing(args.db) as store:
        config = RunConfig.from_dict(store.run(args.resume)["config"])
    _refuse_changed_settings(args, config)
    if args.steps is not None and args.steps < 0:
        raise SystemExit(f"icm run: --steps must be at least 0, got {args.steps}")
    if config.search.batch_size and (args.replay or args.steps is not None):
        raise SystemExit(f"icm run --resume {args.resume}: a batched run continues its batch runs as they were "
                         f"started; --replay and --steps apply to one batch run (icm runs lists them: --resume BATCH_RUN)")
    return config, None


def replay_with_progress(store, run_id: int, backend, steps: int | None = None):
    """The run's search rebuilt by replay (runs.replay), with a progress bar and its verdict printed."""
    from ..runs.replay import ReplayDiverged, replay

    with Progress() as progress:
        def count(done: int, total: int) -> None:  # events redone so far, of the stored ones
            progress(done, total, f"replaying run {run_id}: events")

        try:
            search, report = replay(store, run_id, backend, steps=steps, on_event=count)
        except ReplayDiverged as error:
            raise SystemExit(f"icm: run {run_id} does not reproduce: {error}") from None
    print(f"replayed run {run_id}: {report.summary()}")
    return search


def _refuse_changed_settings(args, config) -> None:
    """--resume continues a run with the settings it started with: a flag that asks for another
    value (other than --steps) is an error, not silently ignored."""
    stored = dataclasses.asdict(config.search)
    changed = [f"--{name.replace('_', '-')} {value} (run: {stored[name]})"
               for name, value in given_search_settings(args).items() if name != "steps" and value != stored[name]]
    # a model flag at its default (or unset) was not given: only a different value is a change
    changed += [f"{s.flag} {getattr(args, s.option)} (run: {getattr(config.model, s.name)})"
                for s in settings(ModelConfig)
                if getattr(args, s.option) not in (None, s.default, getattr(config.model, s.name))]
    changed += [f"--{flag} {value} (run: {config.dataset})" for flag, value in (("data", args.data), ("limit", args.limit), ("task", args.task))
                if value not in (None, DEFAULT_DATA, config.dataset)]
    if args.preset != "default":
        changed.append(f"--preset {args.preset}")
    if changed:
        raise SystemExit(f"icm run --resume {args.resume}: a run keeps the settings it started with; only --steps may "
                         f"change (got {'; '.join(changed)}). Change alpha or T0 by steering in the studio, or start a new run.")


def print_outcome(run_id: int, search) -> None:
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
