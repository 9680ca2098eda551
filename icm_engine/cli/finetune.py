"""`icm finetune`: train a model on a run's labels (a logistic head or LoRA), saved beside the database."""
from __future__ import annotations

from .options import add_db_option, add_learner_options, add_model_options, learner_config, load_backend


def add_parser(subparsers) -> None:
    finetune = subparsers.add_parser("finetune", help="fine-tune the model on a run's labels (head or LoRA)")
    add_db_option(finetune)
    finetune.add_argument("--run", type=int, required=True, help="the run whose labels to train on")
    finetune.add_argument("--seed", type=int, default=0, help="drives the LoRA learner's data order and initialization")
    add_learner_options(finetune, "learner")
    add_model_options(finetune)
    finetune.set_defaults(model=None)  # default: the run's own model


def run(args) -> int:
    from ..core.config import ModelConfig
    from ..runs.finetune import finetune, run_labels
    from ..store.database import Store
    from .options import model_config

    config = learner_config(args)
    with Store.existing(args.db) as store:  # read, then closed: training does not hold the database
        try:
            source = run_labels(store, args.run)
        except (KeyError, ValueError) as error:
            raise SystemExit(f"icm finetune: {error.args[0] if error.args else error}") from None
    model = model_config(args) if args.model is not None else ModelConfig(**source.model_config)
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
