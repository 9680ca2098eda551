"""`icm`: run, resume and export searches from the shell; start the app. A thin layer over the engine.

Each subcommand is one module of this package with add_parser(subparsers) and run(args); this one
puts them under one parser and turns a user's mistake into one line and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import app, bench, eval, evals, export, finalize, finetune, models, predict, replay, report, run, runs, trust
from .options import apply_server_options

# In the order `icm --help` lists them.
COMMANDS = {"run": run, "export": export, "finetune": finetune, "predict": predict, "finalize": finalize, "replay": replay,
            "runs": runs, "report": report, "trust": trust, "models": models, "bench": bench, "eval": eval, "evals": evals,
            "app": app}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icm", description="ICM Studio: unsupervised label elicitation")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


def use_huge_pages_for_tensors() -> None:
    """Ask torch's CPU allocator for transparent huge pages (read once, at torch's first large
    allocation, so before torch is imported). The fast scorer fills fresh key/value buffers of
    tens of MB per layer; with 4 KB pages the page faults alone cap those copies near 1.7 GB/s
    on our CI machines, with huge pages they run at memory speed. A user's setting wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def main(argv: list[str] | None = None) -> int:
    use_huge_pages_for_tensors()  # inherited by `icm app`'s streamlit process too
    args = build_parser().parse_args(argv)
    from ..core.errors import InputError
    from ..store.location import default_db

    # The one place a known error becomes one line, for every subcommand: a command raises
    # (InputError from any layer, or SystemExit with its own words) and never prints it itself.
    try:
        apply_server_options(args)
        return COMMANDS[args.command].run(args)
    except InputError as error:  # a bad file, a missing run, a foreign or locked database...
        where = f" (default database: {default_db()})" if getattr(args, "db", None) == default_db() else ""
        return _fail(f"icm {args.command}: {_one_line(error)}{where}")
    except SystemExit as stop:  # a command's own refusal, already worded for the user
        if isinstance(stop.code, str):
            return _fail(_one_line(stop.code))
        raise


def _one_line(message) -> str:
    """A message that spans lines (a DuckDB error quoting its query) folded onto one."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _fail(message: str) -> int:
    """A user error: one line on stderr and exit status 2 (argparse's, for the same kind of mistake)."""
    print(message, file=sys.stderr)
    return 2
