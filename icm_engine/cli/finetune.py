"""`icm finetune`: train a model on a run's labels (a logistic head or LoRA), saved beside the database."""
from __future__ import annotations

from .options import add_db_option, add_learner_options, add_model_options, learner_config, load_backend


def add_parser(subparsers) -> None:
    finetune = subparsers.add_parser("finetune", help="fine-tune the model on a run's labels (head or LoRA)")
    add_db_option(finetune)
    finetune.add_argument("--run", type=int, required=True, help="the run whose labels to train on")
    finetune.add_argument("--seed", type=int, default=0, help="drives the LoRA learner's data order and initialization")
    finetune.add_argument("--iterative", action="store_true",
                          help="with a batched run (icm run --batch-size): train on batch 1's ICM labels, label batch 2 "
                               "with that model, train on batches 1-2, label batch 3, ...; saves the last model")
    finetune.add_argument("--out", default=None, metavar="FILE",
                          help="with --iterative: write every example's iterative label as a CSV (uid, batch, label, "
                               "source, p_true, icm_label)")
    add_learner_options(finetune, "learner")
    add_model_options(finetune)
    finetune.set_defaults(model=None)  # default: the run's own model


def read_source(args, read):
    """What to train on, read by read(store, run_id) from the database, which is then closed (training
    does not hold it), and the model: --model, else the run's own. A bad run id: one line, exit 2."""
    from ..core.config import ModelConfig
    from ..store.database import Store
    from .options import model_config

    with Store.existing(args.db) as store:
        try:
            source = read(store, args.run)
        except (KeyError, ValueError) as error:
            raise SystemExit(f"icm finetune: {error.args[0] if error.args else error}") from None
    return source, model_config(args) if args.model is not None else ModelConfig(**source.model_config)


def run(args) -> int:
    from ..runs.finetune import finetune, run_labels

    config = learner_config(args)
    if args.out is not None and not args.iterative:
        raise SystemExit("icm finetune: --out writes the labels of --iterative; a plain fine-tune's labels are its run's "
                         "(icm export), and icm predict labels new data")
    if args.iterative:
        return run_iterative(args, config)
    source, model = read_source(args, run_labels)
    print(f"fine-tuning {model.name} with the {config.learner} learner on run {args.run}'s {len(source.labels)} labels "
          f"({sum(source.labels)} True)")
    backend = load_backend(model)
    provenance = finetune(args.db, source, backend, config, progress=progress_bar(), seed=args.seed)
    curve = provenance["loss_curve"]
    print(f"saved {provenance['id']} ({provenance['kind']}) in {provenance['seconds']:.1f} s: training loss "
          f"{curve[0]:.4f} -> {curve[-1]:.4f} over {len(curve)} steps, agreement with its training labels "
          f"{provenance['train_accuracy']:.3f}")
    print(f"label new data with: icm predict --db {args.db} --finetuned {provenance['id']} --data FILE --task {source.task.name}")
    return 0


def progress_bar():
    """The learners' progress(done, total, message) as a Progress: a stage for reading the inputs,
    one for training (its message, the loss, as the note)."""
    from .progress import Progress

    progress = Progress()

    def show(done: int, total: int, message: str) -> None:
        stage = "preparing inputs" if message.startswith("reading") else "training steps"
        progress(done, total, stage, "" if stage == "preparing inputs" else message)
    return show


def run_iterative(args, config) -> int:
    """`icm finetune --run PARENT --iterative`: runs/iterative.py, a line per round."""
    import io
    from pathlib import Path

    import pandas as pd

    from ..runs.iterative import batched_labels, iterative_finetune
    from .options import write_atomically

    source, model = read_source(args, batched_labels)
    total = len(source.batches)
    print(f"iterative fine-tuning of {model.name} with the {config.learner} learner over run {args.run}'s {total} "
          f"batches: batch 1's {len(source.icm[0])} ICM labels, then {total - 1} rounds")
    backend = load_backend(model)

    def say(done: dict) -> None:
        agreement = ("" if done["icm_agreement"] is None else
                     f"; agreement with its ICM labels (run {done['labeled_run']}) {done['icm_agreement']:.3f} "
                     f"on {done['n_icm']}")
        print(f"round {done['round']}/{total - 1}: trained on batches 1-{done['round']} ({done['n_train']} labels), "
              f"labeled batch {done['labeled_batch']}/{total} ({done['n_labeled']} examples, "
              f"{done['n_labeled_true']} True){agreement}", flush=True)

    provenance, labeling = iterative_finetune(args.db, source, backend, config, progress=progress_bar(),
                                              on_round=say, seed=args.seed)
    print(f"saved {provenance['id']} ({provenance['kind']}): trained on batches 1-{total - 1} "
          f"({provenance['n_labels']} labels) in {provenance['seconds']:.1f} s")
    if args.out is None:
        print(f"the labels of every batch: add --out FILE; label new data with: icm predict --db {args.db} "
              f"--finetuned {provenance['id']} --data FILE")
        return 0
    batch_of = {i: k + 1 for k, batch in enumerate(source.batches) for i in batch}
    frame = pd.DataFrame([{"uid": source.examples[i].uid, "batch": batch_of[i], "label": y, "source": how,
                           "p_true": None if p is None else round(p, 6), "icm_label": source.icm[batch_of[i] - 1].get(i)}
                          for i, (y, how, p) in sorted(labeling.items())])
    frame["icm_label"] = frame["icm_label"].astype("Int64")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    write_atomically(Path(args.out), buffer.getvalue().encode())
    print(f"wrote {args.out} ({len(frame)} rows, {int(frame['label'].sum())} True)")
    return 0
