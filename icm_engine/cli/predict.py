"""`icm predict`: label a table with a fine-tuned model (`icm finetune`), one row per example."""
from __future__ import annotations

import io
from pathlib import Path

from .options import add_db_option, add_model_options, load_backend, read_dataset, write_atomically


def add_parser(subparsers) -> None:
    predict = subparsers.add_parser("predict", help="label data with a fine-tuned model (see icm models)")
    add_db_option(predict)
    predict.add_argument("--finetuned", required=True, metavar="ID", help="a fine-tuned model's id, e.g. ft-1")
    predict.add_argument("--data", required=True, help="sample:NAME, shared:NAME or a CSV/JSONL/Parquet path")
    predict.add_argument("--task", default=None, help="task (default: the one the model was trained on)")
    predict.add_argument("--limit", type=int, default=None)
    predict.add_argument("--out", default=None, help="CSV to write (uid, label, p_true); default: standard output")
    add_model_options(predict)
    predict.set_defaults(model=None)  # default: the model it was fine-tuned from


def run(args) -> int:
    import pandas as pd

    from ..core.config import ModelConfig
    from ..learners.saved import finetuned_root, read_provenance
    from ..runs.finetune import predict
    from .finetune import progress_bar
    from .options import model_config

    try:
        provenance = read_provenance(finetuned_root(args.db), args.finetuned)
    except ValueError as error:
        raise SystemExit(f"icm predict: {error}") from None
    task = args.task or provenance["task"]["name"]
    loaded = read_dataset(args.data, task, args.limit)
    if loaded.task.label_words != tuple(provenance["task"]["label_words"]):
        raise SystemExit(f"icm predict: {args.data} is read as task {loaded.task.name!r} with label words "
                         f"{loaded.task.label_words}; {args.finetuned} was trained on {tuple(provenance['task']['label_words'])}")
    model = model_config(args) if args.model is not None else ModelConfig(name=provenance["model"]["name"])
    backend = load_backend(model)
    labels, p_true = predict(args.db, args.finetuned, backend, loaded.examples, progress_bar())
    frame = pd.DataFrame({"uid": [e.uid for e in loaded.examples], "label": labels, "p_true": p_true.round(6)})
    if loaded.gold:
        gold = [loaded.gold.get(i) for i in range(len(loaded.examples))]
        scored = [(y, g) for y, g in zip(labels, gold) if g is not None]
        if scored:
            print(f"audit only: agreement with the data's gold {sum(y == g for y, g in scored) / len(scored):.3f} "
                  f"on {len(scored)}", flush=True)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    if args.out is None:
        print(buffer.getvalue(), end="")
    else:
        write_atomically(Path(args.out), buffer.getvalue().encode())
        print(f"wrote {args.out} ({len(frame)} rows, {sum(labels)} True)")
    return 0
