"""`icm replay`: redo a stored run from its first event and check every decision and score (writes nothing)."""
from __future__ import annotations

from .options import add_db_option, load_backend
from .run import replay_with_progress


def add_parser(subparsers) -> None:
    replay = subparsers.add_parser(
        "replay", help="redo a stored run from its first event with its own settings and model, checking that "
                       "every decision and score reproduces (takes as long as the run did; writes nothing)")
    add_db_option(replay)
    replay.add_argument("--run", type=int, required=True)


def run(args) -> int:
    from ..core.config import RunConfig
    from ..store.database import Store

    with Store.existing(args.db) as store:  # read-only
        backend = load_backend(RunConfig.from_dict(store.run(args.run)["config"]).model)
        replay_with_progress(store, args.run, backend)
    return 0
