"""`icm models`: the bundled models, one line each."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    subparsers.add_parser("models", help="list bundled models")


def run(args) -> int:
    from ..runs.models import list_bundled_models

    for name, description in list_bundled_models().items():
        print(f"{name:16s} {description}")
    return 0
