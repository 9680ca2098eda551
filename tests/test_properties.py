"""Property tests (hypothesis): the consistency rules against their definition, and a run's steps
and resume state through the store, for arbitrary groups, keys, labels and scores."""
from __future__ import annotations

import math
from itertools import combinations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icm_engine.core.records import Flip, LabelState, SearchProgress, SearchSnapshot, StepRecord
from icm_engine.core.tasks import RULES, ConsistencyIndex, Example, Task, consistent_options, is_inconsistent
from icm_engine.store.database import Store

groups = st.sampled_from([None, "g1", "g2", "g3"])
keys = st.sampled_from([None, "k1", "k2", "k3"])
examples = st.lists(st.builds(lambda g, k: (g, k), groups, keys), min_size=1, max_size=9).map(
    lambda parts: [Example(f"u{i}", {"text": f"t{i}"}, group=g, key=k) for i, (g, k) in enumerate(parts)])
rules = st.sampled_from(RULES)


def by_definition(rule: str, a: Example, ya: int, b: Example, yb: int) -> bool:
    """The paper's rules, written out once more: same group only; exclusive: same key must agree,
    different keys cannot both be True; pairs: exactly one of the two is True."""
    if rule == "none" or a.group is None or a.group != b.group:
        return False
    if rule == "exclusive":
        return ya != yb if a.key == b.key else ya == yb == 1
    return ya == yb


@given(rules, examples, st.data())
def test_inconsistency_follows_the_definition_and_is_symmetric(rule, items, data):
    a, b = data.draw(st.sampled_from(items)), data.draw(st.sampled_from(items))
    for ya in (0, 1):
        for yb in (0, 1):
            assert is_inconsistent(rule, a, ya, b, yb) == by_definition(rule, a, ya, b, yb)
            assert is_inconsistent(rule, a, ya, b, yb) == is_inconsistent(rule, b, yb, a, ya)


@given(rules, examples, st.data())
def test_consistent_options_are_exactly_the_consistent_labelings(rule, items, data):
    a, b = data.draw(st.sampled_from(items)), data.draw(st.sampled_from(items))
    options = consistent_options(rule, a, b)
    assert set(options) == {(ya, yb) for ya in (0, 1) for yb in (0, 1) if not by_definition(rule, a, ya, b, yb)}
    assert options  # every pair has a way out (ConsistencyFix relies on it)


@given(rules, examples, st.data())
def test_the_index_finds_every_inconsistent_pair_and_no_other(rule, items, data):
    labeled = data.draw(st.lists(st.sampled_from(range(len(items))), unique=True))
    labels = {i: data.draw(st.sampled_from([0, 1])) for i in labeled}
    index = ConsistencyIndex(rule, items)
    expected = {(i, j) for i, j in combinations(sorted(labels), 2)
                if by_definition(rule, items[i], labels[i], items[j], labels[j])}
    found = index.inconsistent_pairs(labels)
    assert {tuple(sorted(p)) for p in found} == expected
    assert len(found) == len(expected)  # each pair once


finite = st.floats(min_value=-60, max_value=0, allow_nan=False, allow_infinity=False)
maybe = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_steps_and_resume_state_round_trip_through_the_store(data):
    n = data.draw(st.integers(1, 8))
    task = Task(name="t", template="{text}", fields=("text",))
    with Store() as store:
        run_id = store.create_run(store.add_dataset("d", task.to_dict(), [Example(f"u{i}", {"text": f"x{i}"}) for i in range(n)],
                                                    None), {}, {})
        for iteration in range(data.draw(st.integers(1, 4))):
            members = data.draw(st.lists(st.integers(0, n - 1), unique=True))
            labels = {e: LabelState(data.draw(st.sampled_from([0, 1])), k,
                                    data.draw(st.one_of(st.none(), st.tuples(finite, finite))),
                                    data.draw(st.booleans()))
                      for k, e in enumerate(members)}
            excluded = set(data.draw(st.lists(st.integers(0, n - 1), unique=True))) - set(members)
            flips = [Flip(e, None, s.label, "proposal") for e, s in labels.items()]
            record = StepRecord(iteration=iteration, kind="propose", temperature=data.draw(maybe), example=members[0] if members else None,
                                u_before=data.draw(maybe), u_after=data.draw(maybe), delta=data.draw(maybe),
                                draw=data.draw(st.floats(0, 1)), accepted=data.draw(st.booleans()), flips=flips,
                                labeled_count=len(labels))
            snapshot = SearchSnapshot(
                iteration=iteration, labels=labels, excluded=excluded, rng_state={"state": data.draw(st.integers(0, 2**64))},
                next_position=len(labels), alpha=data.draw(st.floats(0.01, 1e4)), t0=data.draw(st.floats(0.01, 100)),
                u=data.draw(maybe), ap=data.draw(maybe), inconsistencies=data.draw(st.one_of(st.none(), st.integers(0, 50))),
                progress=SearchProgress(accepted_changes=iteration, last_change=iteration,
                                        labeled_at=data.draw(st.one_of(st.none(), st.integers(0, 9)))))
            store.record_step(run_id, record, snapshot)
            assert store.load_snapshot(run_id) == snapshot
            event = store.events(run_id).iloc[-1]
            for name in ("temperature", "u_before", "u_after", "delta", "draw"):
                stored, given_value = event[name], getattr(record, name)
                assert (given_value is None and math.isnan(stored)) or stored == given_value
            assert bool(event["accepted"]) == record.accepted
            assert len(store.labels(run_id)) == len(labels)
