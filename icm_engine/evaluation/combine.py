"""Combine evaluations run apart into one set of tables.

DuckDB lets one process write a file, so seeds run in parallel (or over several days) land in
separate evaluations, often separate files. Their rows can be pooled only when everything but the
seeds and the methods was the same: the data and its split, the model, the search settings other
than the seed, the test-time decision rule. Anything else is refused with the setting named.
"""
from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from .comparison import TEST_TABLE

# Settings of an evaluation's stored config that must agree (the rest: seeds, methods, progress).
MUST_MATCH = ("task", "data", "search_size", "test_size", "size_unit", "split_seed", "steps_resolved", "max_demos",
              "self_label_rounds", "decision", "n_demos")


class Part(NamedTuple):
    source: str  # how the user names it: "runs/a.duckdb evaluation 2"
    config: dict
    rows: pd.DataFrame


def comparable(config: dict) -> dict:
    """The part of a stored evaluation config that decides what its numbers mean."""
    view = {key: config.get(key) for key in MUST_MATCH}
    view["search"] = {k: v for k, v in (config.get("search") or {}).items() if k != "seed"}
    backend = config.get("backend") or {}
    view["model"] = backend.get("revision") or config.get("model")
    view["split"] = config.get("split")
    dataset = {k: v for k, v in (config.get("dataset") or {}).items() if k != "source"}
    if isinstance(dataset.get("task"), dict):  # a task's description is prose: reworded, it changes no number
        dataset["task"] = {k: v for k, v in dataset["task"].items() if k != "description"}
    view["dataset"] = dataset
    return view


def _seed(value) -> int | None:
    return None if pd.isna(value) else int(value)


def combine(parts: list[Part]) -> pd.DataFrame:
    """The rows of every part, one table; ValueError naming the part and setting that do not fit.

    A seeded row may come from one part only. A row without a seed (a deterministic method such as
    zero-shot, run once per evaluation) may repeat: kept once where the repeats agree."""
    if not parts:
        raise ValueError("no evaluations to combine")
    reference = comparable(parts[0].config)
    for part in parts[1:]:
        view = comparable(part.config)
        differ = [key for key in reference if view[key] != reference[key]]
        if differ:
            raise ValueError(f"{part.source} differs from {parts[0].source} in {', '.join(differ)}: "
                             "only seeds and methods may differ between evaluations combined")
    seen: dict[tuple, tuple[str, float]] = {}  # (table, method, seed) -> (source, accuracy)
    kept = []
    for part in parts:
        for _, row in part.rows.iterrows():
            table = row["table"] if "table" in row and isinstance(row["table"], str) else TEST_TABLE
            key = (table, row["method"], _seed(row["seed"]))
            if key in seen:
                source, accuracy = seen[key]
                if key[2] is None and accuracy == row["accuracy"]:
                    continue
                what = f"seed {key[2]}" if key[2] is not None else "its seedless row, with another accuracy,"
                raise ValueError(f"{part.source}: {row['method']} ({table} table) {what} is also in {source}; "
                                 "combine each seed once")
            seen[key] = (part.source, row["accuracy"])
            kept.append(row)
    return pd.DataFrame(kept).reset_index(drop=True)
