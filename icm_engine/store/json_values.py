"""JSON for what the store keeps: records holding numpy values, sets and dataclasses, and RNG
states that must come back identical."""
from __future__ import annotations

import dataclasses
import json
from typing import Any


def _plain(obj: Any) -> Any:
    """json.dumps fallback: numpy scalars/arrays, sets and dataclasses turn up in records."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "isoformat"):  # datetimes in evaluation extras
        return obj.isoformat()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON: {obj!r}")


def to_json(obj: Any) -> str:
    return json.dumps(obj, default=_plain)


# RNG states must come back *identical*, not merely JSON-equal: random.Random.setstate wants
# tuples and numpy's MT19937 keeps an ndarray, so both are tagged rather than flattened.
def tag_state(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return {"__tuple__": [tag_state(x) for x in obj]}
    if isinstance(obj, list):
        return [tag_state(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): tag_state(v) for k, v in obj.items()}
    if getattr(obj, "ndim", 0) and hasattr(obj, "dtype"):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    return obj  # numpy scalars are left to _plain


def untag_state(obj: dict) -> Any:
    if obj.keys() == {"__tuple__"}:
        return tuple(obj["__tuple__"])
    if obj.keys() == {"__ndarray__", "dtype"}:
        import numpy as np  # only states that held an array need it

        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return obj


def json_value(value: Any) -> Any:
    """A table cell as JSON wants it: NaN/NA -> None, numpy scalars -> Python; containers as they are."""
    if isinstance(value, (list, tuple, dict)) or getattr(value, "ndim", 0):
        return value  # containers and arrays: to_json handles them
    import pandas as pd  # only evaluation rows come here

    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value
