"""A set_param event's changes as databases before schema 5 kept them: in its free-text note.

Read once, when such a file is upgraded (or read as the current schema), into param_changes rows;
nothing else in ICM Studio parses a note. The two forms releases wrote (core/steering.py before
schema 5): "alpha=0.5, t0=2" (either or both, or none) from set_params, and
"steps=40 (extended by 5)" from extend. Values before the change were not written: they come back
as None.
"""
from __future__ import annotations

import re

from ..core.records import ParamChange

_EXTENDED = re.compile(r"steps=(\d+) \(extended by (\d+)\)")


def param_changes_from_note(note: str, iteration: int) -> list[ParamChange] | None:
    """The changes an old set_param event at `iteration` made; None for a note no release wrote
    (its event keeps no rows, and a replay of it stops at the note that differs)."""
    extended = _EXTENDED.fullmatch(note)
    if extended:  # extend(k) at iteration i: no stopping rule before i + k
        cap, added = int(extended.group(1)), int(extended.group(2))
        return [ParamChange("steps", None, float(cap)), ParamChange("extended_until", None, float(iteration + added))]
    parts = [part for part in note.split(", ") if part]
    values = [part.split("=", 1) for part in parts if "=" in part]
    if len(values) != len(parts) or {name for name, _ in values} - {"alpha", "t0"}:
        return None
    try:
        return [ParamChange(name, None, float(value)) for name, value in values]
    except ValueError:
        return None
