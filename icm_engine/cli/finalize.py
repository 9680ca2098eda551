"""`icm finalize`: the final pass now, on a stored run: label what its search left, recorded as a step."""
from __future__ import annotations

from .options import add_db_option, add_model_options, load_backend
from .progress import Progress
from .run import print_outcome


def add_parser(subparsers) -> None:
    final = subparsers.add_parser("finalize", help="label what a run's search left (argmax given its labeled set), "
                                                   "recorded as a step")
    add_db_option(final)
    final.add_argument("--run", type=int, required=True)
    add_model_options(final)


def run(args) -> int:
    from ..core.config import RunConfig
    from ..runs.runner import finalize, open_search
    from ..store.database import Store

    with Store.existing(args.db, read_only=False) as store:
        backend = load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        search = open_search(store, args.run, backend)
        if not search.initialized:
            raise SystemExit(f"run {args.run} has no step yet: start it first (icm run --resume {args.run})")
        left = len(search.unlabeled())
        print(f"run {args.run}: final pass over {left} unlabeled examples, given {len(search.labels)} labeled ones")
        with Progress() as progress, progress.ticking(f"final pass over {left} examples",
                                                      lambda: backend.stats.tokens_forwarded, "tokens"):
            finalize(store, args.run, search)
        print_outcome(args.run, search)
    return 0
