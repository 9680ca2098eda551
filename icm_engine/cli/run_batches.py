"""`icm run --batch-size N`: one search per batch under one parent run (runs/batches.py), printed
batch by batch; `icm run --resume PARENT` continues the batch in flight and the rest."""
from __future__ import annotations

import json

from .progress import Progress


def check_plan(args, config, loaded, backend) -> None:
    """The batches can be planned (no consistency group is too long for one prompt): said in one
    line before anything is written."""
    from ..runs.batches import plan_batches

    try:
        plan_batches(loaded.task, loaded.examples, backend, config.search.batch_size)
    except ValueError as error:
        raise SystemExit(f"icm: {args.data}: {error}") from None


def run_batched(args, store, parent_id: int, backend) -> int:
    """Run the parent's unfinished batches in order, with a progress bar per batch and a line as
    each starts and ends; then the parent's outcome over the whole dataset."""
    from ..evaluation.run_report import run_gold_agreement
    from ..runs.batches import advance_batches, batch_table, ensure_batches

    children = ensure_batches(store, parent_id, backend)
    rows = batch_table(store, parent_id)
    n, done = sum(row.examples for row in rows), sum(row.status == "finished" for row in rows)
    print(f"run {parent_id}: {n} examples in {len(children)} batches (runs {children[0]}-{children[-1]}), "
          f"{done} finished; model {backend.name}, db {args.db}")
    batch, running = "", None  # the batch in flight, as its progress bar names it, and its run
    with Progress() as progress:
        def on_batch(index: int, total: int, child: int, search) -> None:
            nonlocal batch, running
            batch, running = f"batch {index}/{total}", child
            where = f", resuming at iteration {search.iteration}" if search.initialized else ""
            print(f"{batch}: run {child}, {len(search.active())} examples{where}", flush=True)

        def on_step(search, record) -> None:
            if args.print_steps:
                print(json.dumps({"run_id": running, "iteration": record.iteration, "accepted": record.accepted,
                                  "labeled": record.labeled_count, "parent_run_id": parent_id}), flush=True)
            phase, step_done, step_total = search.stop_progress()
            progress(step_done, step_total, f"{batch}: {phase}", f"step {record.iteration}, {record.labeled_count} labeled")

        def on_batch_done(index: int, total: int, child: int) -> None:
            row = batch_table(store, parent_id)[index - 1]
            labeled = len(store.labels(parent_id))
            print(f"batch {index}/{total}: run {child} {row.status}, {row.labeled} of {row.examples} labeled; "
                  f"run {parent_id}: {labeled} of {n} labeled over the whole dataset", flush=True)

        finished = advance_batches(store, parent_id, backend, on_batch=on_batch, on_step=on_step,
                                   on_batch_done=on_batch_done)
    labels = store.labels(parent_id)
    true = int(labels["label"].sum()) if len(labels) else 0
    print(f"run {parent_id} {store.run(parent_id)['status']}: {len(labels)} of {n} examples labeled over "
          f"{len(children)} batches; {true} True / {len(labels) - true} False")
    if not finished:
        print(f"continue with: icm run --db {args.db} --resume {parent_id}")
    agreement = run_gold_agreement(store, parent_id)
    if agreement and agreement["accuracy"] is not None:
        print(f"audit only (gold never used by the search): agreement with gold {agreement['accuracy']:.3f} "
              f"on {agreement['n']} labeled")
    return 0
