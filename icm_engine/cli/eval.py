"""`icm eval`: the paper's comparison on a gold-labelled dataset, from the shell.

The work is in evaluation/comparison.py (the runs) and evaluation/comparison_tables.py (tables,
chart); this file parses, loads, prints and saves. `icm evals` (evals.py) shows stored ones.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .progress import Progress
from .options import (
    add_db_option, add_learner_options, add_model_options, add_setting_flag, learner_config, load_backend, model_config,
    search_setting,
)
# The shared data set behind each built-in task (see ../shared/data/README.md).
DEFAULT_DATA = {
    "truthfulqa": "shared:truthfulqa",
    "gsm8k_verification": "shared:gsm8k",
    "hh_rlhf_harmless": "shared:hh_rlhf",
    "sentiment": "shared:sentiment",
    "sentiment_single": "shared:sentiment",
}


def _seeds(text: str) -> tuple[int, ...]:
    """"3" means seeds 0, 1, 2; "0,5,9" lists them."""
    try:
        if "," in text:
            return tuple(int(s) for s in text.split(",") if s.strip())
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count or a comma list, got {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError("--seeds must be at least 1")
    return tuple(range(count))


def _learners(text: str) -> tuple[str, ...]:
    from ..core.config import LEARNERS

    learners = tuple(m.strip() for m in text.split(",") if m.strip())
    if not learners or set(learners) - set(LEARNERS):
        raise argparse.ArgumentTypeError(f"learners are {', '.join(LEARNERS)}; got {text!r}")
    return learners


def _methods(text: str) -> tuple[str, ...]:
    from ..evaluation.comparison import all_methods

    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in all_methods()]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown methods {unknown}; choose from {', '.join(all_methods())}")
    return methods


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add `eval` to an argparse subparsers object; returns the new parser."""
    from ..core.config import SearchConfig
    from ..evaluation.comparison import DECISION_RULES, DEFAULT_DECISION, DEFAULT_METHODS, SIZE_UNITS, all_methods
    from ..evaluation.baselines import SELF_LABEL_ROUNDS

    defaults = SearchConfig()
    parser = subparsers.add_parser(
        "eval", help="compare zero-shot, gold, ICM and perturbed-label prompting on a gold-labelled dataset",
        description="Split a gold-labelled dataset by consistency group into a search split (gold hidden from the "
                    "search) and a test split; report test accuracy of each method over several seeds; store the "
                    "results in the database and write a chart.",
    )
    data = parser.add_argument_group("data")
    # single claims by default, as the Yelp sample: the task the bundled model has something to find in
    data.add_argument("--task", default="sentiment_single", help=f"task name, default %(default)s ({', '.join(DEFAULT_DATA)} or a custom one)")
    data.add_argument("--data", default=None, help="shared:NAME, sample:NAME or a CSV/JSONL/Parquet file with a gold column "
                                                   "(default: the task's shared data set)")
    data.add_argument("--search-size", type=int, default=32, help="groups (sentences, questions, pairs) in the search split")
    data.add_argument("--test-size", type=int, default=100, help="groups in the test split")
    data.add_argument("--size-unit", choices=SIZE_UNITS, default="groups", help="count sizes in groups or in examples (claims)")
    data.add_argument("--split-seed", type=int, default=0)

    method = parser.add_argument_group("methods")
    method.add_argument("--methods", type=_methods, default=DEFAULT_METHODS,
                        help=f"comma list (default {','.join(DEFAULT_METHODS)}); all: {','.join(all_methods())}")
    method.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="a count (default 3: seeds 0,1,2) or a comma list")
    method.add_argument("--steps", type=int, default=None, help=f"cap on ICM iterations per search (default {defaults.steps}); "
                        "each search stops by its own rule (default: until labeled) and ends with the final pass")
    method.add_argument("--self-label-rounds", type=int, default=SELF_LABEL_ROUNDS, help="rounds of the self-labeling baseline")
    method.add_argument("--max-demos", type=int, default=None, help="cap on demonstrations (default: as many as fit the context)")
    for name in ("scorer", "alpha"):  # the searches' other settings are each ICM row's own
        add_setting_flag(method, search_setting(name), getattr(defaults, name))
    method.add_argument("--decision", choices=tuple(DECISION_RULES), default=DEFAULT_DECISION,
                        help="how a test prediction is decided, the same for every row (the table shows both)")

    add_model_options(parser)

    method.add_argument("--finetune", type=_learners, default=(),
                        help="also fine-tune on each method's labels and test the result: a comma list of learners "
                             "(head, lora); the fine-tuning table")
    add_learner_options(parser, "learner settings (with --finetune)", skip=("learner",))
    output = parser.add_argument_group("output")
    add_db_option(output)
    output.add_argument("--out", default=None, help="chart path (.html, plus .png when kaleido is installed; default runs/eval_<id>.html)")
    output.add_argument("--name", default="", help="a name for the evaluation (default: task, model and date)")
    return parser


def config_from_args(args):
    from ..core.config import SearchConfig
    from ..evaluation.comparison import EvalConfig

    return EvalConfig(
        task=args.task, data=args.data or DEFAULT_DATA.get(args.task, ""), search_size=args.search_size,
        test_size=args.test_size, size_unit=args.size_unit, split_seed=args.split_seed, seeds=tuple(args.seeds),
        steps=args.steps, max_demos=args.max_demos, methods=tuple(args.methods), self_label_rounds=args.self_label_rounds,
        search=SearchConfig(alpha=args.alpha, scorer=args.scorer), decision=args.decision,
        model=model_config(args), finetune=tuple(args.finetune), learner=learner_config(args),
    )


def run(args, backend=None) -> int:
    """Execute `icm eval`; `backend` replaces loading --model (tests pass a fake one)."""
    from ..data.datasets import load_any
    from ..evaluation.comparison_tables import (
        accuracy_figure, format_finetune_table, format_label_table, format_table, summarize, summarize_finetune,
        summarize_labels, write_figure,
    )
    from ..evaluation.comparison import EVALUATION, evaluate
    from ..store.database import Store

    started = time.perf_counter()
    config = config_from_args(args)
    if not config.data:
        raise SystemExit(f"task {config.task!r} has no default data set: pass --data")
    # Loading only as many groups as the split needs keeps big files cheap; by examples we cannot know.
    limit = config.search_size + config.test_size if config.size_unit == "groups" else None
    dataset = load_any(config.data, task=config.task, limit=limit)
    print(f"data: {dataset.name} from {dataset.source}: {len(dataset.examples)} examples, task {dataset.task.name}", flush=True)
    if backend is None:
        backend = load_backend(config.model)
    print(f"model: {backend.name} (context {backend.context_window} tokens)", flush=True)

    name = args.name or f"{dataset.task.name} · {backend.name} · {time.strftime('%Y-%m-%d %H:%M')}"
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    # the whole evaluation's bar stays on top; each job's own (a search, a test row) below it
    progress = Progress(keep=(EVALUATION,))
    with Store(args.db) as store, progress:  # the store is held for the whole evaluation: each finished seed is saved at once
        eval_id = None

        def save(result) -> None:  # the first call creates the evaluation, later ones replace its rows
            nonlocal eval_id
            eval_id = store.save_eval(name, result.config, result.rows, eval_id=eval_id)
            if not result.config["complete"]:
                progress.log(f"  saved seeds {result.config['seeds_done']} as evaluation {eval_id} in {args.db}")

        result = evaluate(dataset, backend, config, log=progress.log, on_seed=save, progress=progress)
        save(result)

    labels = summarize_labels(result.rows)
    if len(labels):
        print()
        print(f"label table: the labels each method would export, scored on the whole search split "
              f"({len(result.split.search)} examples; mean ± std over seeds)")
        print(format_label_table(labels))
    print()
    print(f"test table: many-shot prompting with {result.config['n_demos']} demonstrations from the search split "
          f"(the same examples in every row of a seed), both decision rules")
    print(format_table(summarize(result.rows)))
    tuned = summarize_finetune(result.rows)
    if len(tuned):
        print()
        print(f"fine-tuning table: the model fine-tuned on the search split under each method's labels, tested on the "
              f"test split ({len(result.split.test)} examples; learner per row, mean ± std over seeds)")
        print(format_finetune_table(tuned))
    print()
    print(f"evaluation {eval_id} ({name}) saved to {args.db}")
    print(f"data: {dataset.name}; split by group: {len(result.split.search)} search examples (gold hidden from the search), "
          f"{len(result.split.test)} test examples")
    print(f"decision rule: {config.decision_rule}")
    print(f"model: {backend.name}; ICM steps per search: {result.config['steps_resolved']}; seeds: {list(config.seeds)}")
    print("std: sample std over seeds; zero-shot is deterministic, so it is run once")
    out = args.out or str(Path(args.db).parent / f"eval_{eval_id}.html")
    written, skipped = write_figure(accuracy_figure(result.rows, title=f"{dataset.name} · {backend.name}"), out)
    print(f"chart: {', '.join(map(str, written))}" + (f" ({skipped})" if skipped else ""))
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0
