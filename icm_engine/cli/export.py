"""`icm export`: a run's labels as a file, byte for byte what the studio's Export page offers."""
from __future__ import annotations

from pathlib import Path

from .options import add_db_option, write_atomically


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a run's labels for fine-tuning")
    add_db_option(export)
    export.add_argument("--run", type=int, required=True)
    export.add_argument("--format", default="csv", choices=["csv", "sft", "preference", "provenance"])
    export.add_argument("--out", required=True)


def run(args) -> int:
    from ..runs.export import export
    from ..store.database import Store

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
