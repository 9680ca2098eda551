"""`icm runs`: list the runs in a database."""
from __future__ import annotations

from .options import add_db_option


def add_parser(subparsers) -> None:
    add_db_option(subparsers.add_parser("runs", help="list runs"))


def run(args) -> int:
    from ..store.database import Store

    with Store.existing(args.db) as store:
        frame = store.runs()
    shown = ["run_id", "name", "dataset_name", "status", "last_iteration", "updated_at", "error"]
    print(frame[shown].to_string(index=False) if len(frame) else "no runs yet")
    return 0
