"""Replay a stored run from its first event: to continue it bit for bit, or to check that it reproduces.

A plain resume restores what the last step stored (labels, scores, the random generator) and so
decides as the uninterrupted run would; but the scores it computes after the restart come from a
cold prefix cache: the same prompts forwarded in other chunks and batches round float32
differently (about 1e-7 nats in U). A decision could only change on a draw that close to its odds,
yet the event rows are not byte-identical. Replaying makes the model calls of the original process
again, in the same order, so its cache and every score after it are the same bit for bit, at the
cost of recomputing the run so far.

Each replayed event is compared with the stored one, a set_param event's parameter rows
(param_changes) included. A different decision (example, label, acceptance, fix, draw, flip, a
parameter's value) stops the replay with the first one named; different scores are
measured and reported: a run that shared its model with other runs in the studio, or was resumed
without replay, or ran short of memory (the cache then evicts), reproduces its decisions but not
its last bits.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from typing import Callable

from ..backends.base import LanguageModel
from ..core.records import StepRecord
from ..core.search import Search
from ..store.database import Store
from ..store.json_values import to_json
from .runner import open_search

# Columns holding model scores (and what follows from them): compared to the last bit, but a
# difference is measured, not a divergence. Every other column is a decision and must be equal.
SCORE_COLUMNS = ("proposal_logp_json", "u_before", "u_after", "ap_before", "ap_after", "delta", "accept_prob")
SCORE_FIX_KEYS = ("u_before", "u_after")
# When and at what cost a step ran differ between processes by nature.
COST_COLUMNS = ("run_id", "seq", "model_calls", "tokens_forwarded", "tokens_reused", "seconds", "created_at")


class ReplayDiverged(ValueError):
    """A replayed decision differs from the stored one (a user error: the message says where)."""


@dataclass
class ReplayReport:
    events: int = 0
    largest_difference: float = 0.0  # of a stored score, in its own units (nats for U)
    first_difference: str = ""  # the first event whose scores differ, and the column

    def summary(self) -> str:
        if not self.largest_difference:
            return f"{self.events} events replayed: every decision and every score identical, bit for bit"
        return (f"{self.events} events replayed: every decision identical; scores differ by up to "
                f"{self.largest_difference:.3g} (first at {self.first_difference})")


def replay(store: Store, run_id: int, backend: LanguageModel, steps: int | None = None,
           on_event: Callable[[int, int], None] | None = None) -> tuple[Search, ReplayReport]:
    """The run's search after its last stored event, rebuilt by redoing every event from the
    first; `steps` may then extend its step budget (as open_search's does). on_event(done, total)
    reports progress."""
    # Under the stored config, which holds the step cap after every extension, the replayed search
    # never stops earlier than the original did (each event says what to redo anyway).
    search = open_search(store, run_id, backend, from_start=True)
    events = [_plain_row(row) for row in store.events(run_id).to_dict("records")]
    flips: dict[int, list] = {}
    for row in store.flips(run_id).to_dict("records"):
        row = _plain_row(row)
        flips.setdefault(row["seq"], []).append([row["example"], row["old_label"], row["new_label"], row["cause"],
                                                 row["partner"]])
    params: dict[int, list] = {}
    for row in store.param_changes(run_id).to_dict("records"):
        row = _plain_row(row)
        params.setdefault(row["seq"], []).append([row["parameter"], row["old_value"], row["new_value"]])
    cap = search.config.steps  # an extension's redo sets the cap it had then (_redo_set_param)
    report = ReplayReport()
    for done, row in enumerate(events, 1):
        row = dict(row, flips=flips.get(row["seq"], []), params=params.get(row["seq"], []))
        record = _redo(search, row)
        _compare(_record_row(record), row, report)
        report.events = done
        if on_event is not None:
            on_event(done, len(events))
    # The stored cap (each extension wrote the one it set), or `steps` if asked.
    search.config = replace(search.config, steps=steps if steps is not None else max(cap, search.config.steps))
    return search, report


def _redo(search: Search, row: dict) -> StepRecord:
    kind, example, label = row["kind"], row["example"], row["proposed_label"]
    if kind == "init":
        return search.initialize()
    if kind == "propose":
        if search.stopped and search.config.final_pass and search.unlabeled():
            raise ReplayDiverged(f"iteration {row['iteration']}: the stored run proposed where the replay stops")
        return search.step()
    if kind == "final_pass":
        return search.final_pass()
    if kind == "pin":
        return search.pin(example, label)
    if kind in ("unpin", "exclude", "include"):
        return getattr(search, kind)(example)
    if kind == "set_param":
        return _redo_set_param(search, row)
    raise ReplayDiverged(f"event {row['seq']}: no way to replay an event of kind {kind!r}")


def _redo_set_param(search: Search, row: dict) -> StepRecord:
    """Alpha and T0 set, or the step budget extended, from the event's parameter rows."""
    changed = {parameter: (old, new) for parameter, old, new in row["params"]}
    if "extended_until" in changed:
        # The cap in force when the person asked (`icm run --resume --steps` may have raised it without an
        # event); a database older than schema 5 did not record it, and the cap after serves as well.
        old_cap, new_cap = changed.get("steps", (None, search.config.steps))
        search.config = replace(search.config, steps=int(new_cap if old_cap is None else old_cap))
        return search.extend(int(changed["extended_until"][1]) - row["iteration"])
    if set(changed) - {"alpha", "t0"}:
        raise ReplayDiverged(f"event {row['seq']}: no way to replay a change of {sorted(changed)}")
    return search.set_params(**{parameter: new for parameter, (_, new) in changed.items()})


def _record_row(record: StepRecord) -> dict:
    """A replayed step as the store would write it, in the same JSON forms."""
    values = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    values["proposal_logp_json"] = None if record.proposal_logp is None else list(record.proposal_logp)
    values["fixes_json"] = json.loads(to_json([dataclasses.asdict(fix) for fix in record.fixes]))
    values["flips"] = [[f.example, f.old, f.new, f.cause, f.partner] for f in record.flips]
    values["params"] = [[c.parameter, c.old, c.new] for c in record.params]
    return values


def _plain_row(row: dict) -> dict:
    """A stored row with NaN as None (pandas' missing value) and JSON columns parsed."""
    plain = {}
    for key, value in row.items():
        if hasattr(value, "item"):  # a numpy scalar
            value = value.item()
        if isinstance(value, float) and math.isnan(value):
            value = None
        if key.endswith("_json") and isinstance(value, str):
            value = json.loads(value)
        plain[key] = value
    return plain


def _compare(got: dict, stored: dict, report: ReplayReport) -> None:
    where = f"event {stored['seq']} (iteration {stored['iteration']}, {stored['kind']})"
    for column, expected in stored.items():
        if column in COST_COLUMNS:
            continue
        value = got[column]
        if column in SCORE_COLUMNS:
            _measure(value, expected, f"{where}: {column}", report)
        elif column == "fixes_json":
            if len(value) != len(expected):
                raise ReplayDiverged(f"{where}: {len(value)} consistency fixes replayed, {len(expected)} stored")
            for fix_got, fix_stored in zip(value, expected):
                for key, fix_value in fix_stored.items():
                    if key in SCORE_FIX_KEYS:
                        _measure(fix_got[key], fix_value, f"{where}: fix {key}", report)
                    elif fix_got[key] != fix_value:
                        raise ReplayDiverged(f"{where}: a fix's {key} is {fix_got[key]} replayed, {fix_value} stored")
        elif column == "params":
            _compare_params(value, expected, where)
        elif not _same(value, expected):
            raise ReplayDiverged(f"{where}: {column} is {value!r} replayed, {expected!r} stored; the run does not "
                                 "reproduce (another model or weights, or a different version of the engine)")


def _compare_params(got: list, stored: list, where: str) -> None:
    """Parameter rows, value for value; a value before that the store did not record (a database
    older than schema 5) is not compared."""
    if len(got) != len(stored) or any(
            p != q or (o_stored is not None and not _same(o, o_stored)) or not _same(n, n_stored)
            for (p, o, n), (q, o_stored, n_stored) in zip(got, stored)):
        raise ReplayDiverged(f"{where}: parameters {got} replayed, {stored} stored")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):  # an int column read back as float where it has NULLs
        return a is not None and b is not None and float(a) == float(b)
    return a == b


def _measure(got, stored, where: str, report: ReplayReport) -> None:
    if got is None or stored is None:
        if got is not stored:
            raise ReplayDiverged(f"{where} is {got!r} replayed, {stored!r} stored")
        return
    pairs = zip(got, stored) if isinstance(stored, list) else [(got, stored)]
    for a, b in pairs:
        a, b = float(a), float(b)
        difference = 0.0 if a == b or (math.isnan(a) and math.isnan(b)) else abs(a - b)
        if math.isnan(difference):  # one of them NaN
            difference = math.inf
        if difference and not report.first_difference:
            report.first_difference = where
        report.largest_difference = max(report.largest_difference, difference)
