"""Objectives (sum, chance, mean), the temperature clocks, the stopping rule and the final pass."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import PRESETS, SearchConfig, preset
from icm_engine.core.records import LabelState
from icm_engine.core.scoring import Scorer, normalize
from icm_engine.core.search import Search, accepted_clock_temperature, temperature
from tests.fakes import PAIRED, SINGLE, polarity_examples


def scorer(objective: str, paired: bool = False, n: int = 8, calibration: str = "none", bias: float = 0.0) -> Scorer:
    examples, _ = polarity_examples(n, seed=1, paired=paired)
    return Scorer(FakeLM(strength=2, bias=bias), PAIRED if paired else SINGLE, examples,
                  calibration=calibration, objective=objective)


def search(n: int = 12, paired: bool = False, **settings) -> tuple[Search, dict[int, int]]:
    examples, gold = polarity_examples(n, seed=1, paired=paired)
    config = SearchConfig(**{"k_init": 4, "seed": 0, **settings})
    s = Scorer(FakeLM(strength=6), PAIRED if paired else SINGLE, examples, calibration=config.calibration,
               objective=config.objective, use_consistency=config.use_consistency)
    return Search(s, config), gold


def run_all(s: Search) -> list:
    records = []
    while not s.done:
        records.append(s.step())
    return records


def u(sc: Scorer, labels: dict[int, int], alpha: float = 20.0) -> float:
    return sc.evaluate(sorted(labels), labels).utility(alpha)


def test_chance_decides_like_sum_on_every_same_size_change_and_differs_on_additions():
    total, chance = scorer("sum", paired=True), scorer("chance", paired=True)
    base = {0: 1, 1: 0, 2: 0, 3: 1, 4: 1, 5: 0}
    alpha = 20.0
    # every relabel of one example, and every pair of changes (what a ConsistencyFix option does)
    changes = [{i: 1 - base[i]} for i in base] + [{i: 1 - base[i], j: 1 - base[j]} for i in base for j in base if i < j]
    for change in changes:
        after = {**base, **change}
        d_sum = u(total, after, alpha) - u(total, base, alpha)
        d_chance = u(chance, after, alpha) - u(chance, base, alpha)
        assert d_chance == pytest.approx(d_sum, abs=1e-9)
        for temp in (0.1, 1.0, 10.0):  # same acceptance probability at any temperature
            assert min(1, math.exp(min(d_sum / temp, 0))) == pytest.approx(min(1, math.exp(min(d_chance / temp, 0))))
    # an addition the model predicts better than chance: sum rejects it at a cold temperature, chance accepts
    grown = {**base, 6: 1 - base.get(6, 0)}
    raw = total.predict(sorted(base), base, 6)
    best = int(np.argmax(normalize(raw)[0]))
    grown = {**base, 6: best}
    d_sum = u(total, grown, alpha) - u(total, base, alpha)
    d_chance = u(chance, grown, alpha) - u(chance, base, alpha)
    assert d_chance == pytest.approx(d_sum + alpha * math.log(2), abs=1e-9)
    assert d_sum < 0 < d_chance


def test_mean_is_the_mean_signed_log_odds_by_hand():
    for calibration in ("none", "centered"):
        sc = scorer("mean", calibration=calibration, bias=0.7)
        labels = {0: 1, 3: 0, 5: 1}
        order = [3, 0, 5]
        evaluation = sc.evaluate(order, labels)
        raw = np.array([sc.predict(order, labels, t) for t in order])  # each with D minus itself
        if calibration == "centered":
            raw = raw - raw.mean(axis=0)
        logp = raw - np.log(np.exp(raw).sum(axis=1, keepdims=True))
        by_hand = np.mean([logp[k, labels[t]] - logp[k, 1 - labels[t]] for k, t in enumerate(order)])
        assert evaluation.predictability == pytest.approx(by_hand, abs=1e-12)
        assert evaluation.utility(30.0) == pytest.approx(30.0 * by_hand - evaluation.inconsistencies)


def test_the_iteration_clock_follows_the_paper():
    s, _ = search(stop="steps", steps=12, final_pass=False, clock="iteration")
    for record in run_all(s)[1:]:
        assert record.temperature == temperature(record.iteration, 10.0, 0.01, 0.99)


def test_the_accepted_clock_counts_accepted_changes():
    assert accepted_clock_temperature(0, 10.0, 0.01) == 10.0
    assert accepted_clock_temperature(5, 10.0, 0.01) == pytest.approx(10.0 / (1 + 2 * math.log(6)))
    s, _ = search(stop="steps", steps=25, final_pass=False, clock="accepted")
    accepted = 0
    for record in run_all(s)[1:]:
        assert record.temperature == pytest.approx(10.0 / (1 + 2 * math.log(1 + accepted)))
        if record.accepted and record.flips:
            accepted += 1
    assert s.progress.accepted_changes == accepted > 3


def test_balanced_init_and_the_released_code_preset():
    for seed in range(5):
        s, _ = search(n=12, k_init=6, balanced_init=True, seed=seed)  # no consistency rule: no fix changes them
        s.initialize()
        assert sorted(state.label for state in s.labels.values()) == [0, 0, 0, 1, 1, 1]
    released = preset("released_code")
    assert (released.objective, released.clock, released.alpha, released.balanced_init) == ("mean", "accepted", 30.0, True)
    assert preset("paper").objective == "sum" and "default" in PRESETS
    with pytest.raises(ValueError):
        preset("nope")


@pytest.mark.parametrize("bad", [{"alpha": float("nan")}, {"steps": -5}, {"objective": "max"}, {"clock": "wall"},
                                 {"stop": "never"}, {"t0": 0}, {"patience_sweeps": float("inf")}, {"k_init": 1.5}])
def test_nonsense_settings_are_refused_where_they_are_declared(bad):
    with pytest.raises(ValueError):
        SearchConfig(**bad)


def test_until_labeled_stops_after_a_quiet_sweep_and_labels_everything():
    s, gold = search(n=12, stop="labeled", steps=1000, patience_sweeps=1.0, final_pass=False)
    records = run_all(s)
    assert not s.unlabeled() and s.iteration < 1000
    assert s.progress.labeled_at is not None and s.progress.labeled_at <= s.iteration
    quiet = [r for r in records if r.iteration > s.progress.last_change]
    assert len(quiet) >= len(s.active()) and all(not r.flips for r in quiet)
    labels = s.label_map()
    accuracy = np.mean([labels[i] == gold[i] for i in labels])
    assert max(accuracy, 1 - accuracy) == 1.0


def test_final_pass_labels_every_active_example_and_leaves_pins_and_exclusions_alone():
    s, _ = search(n=10, paired=True, stop="steps", steps=3)
    s.step()  # initialize
    pinned = next(i for i in range(s.n_examples) if i not in s.labels)
    s.pin(pinned, 0)
    excluded = next(i for i in range(s.n_examples) if i not in s.labels)
    s.exclude(excluded)
    records = run_all(s)
    final = records[-1]
    assert final.kind == "final_pass" and final.iteration == s.iteration == 3
    left = {f.example for f in final.flips if f.cause == "final_pass"}
    assert left and all(f.old is None for f in final.flips if f.cause == "final_pass")
    assert set(s.labels) == set(range(s.n_examples)) - {excluded}
    assert s.labels[pinned].label == 0 and s.labels[pinned].pinned and pinned not in left
    assert s.scorer.consistency.inconsistent_pairs(s.label_map()) == []  # the fix ran over what the pass touched
    assert final.u_after == pytest.approx(s.snapshot().u) and s.done
    assert all(state.logp is not None for state in s.labels.values())  # every label scored: exports show confidence


def test_final_pass_follows_the_calibrated_prediction_given_the_final_d():
    s, _ = search(n=10, stop="steps", steps=4, calibration="centered")
    while not s.stopped:
        s.step()
    todo = s.unlabeled()
    current = s._current_evaluation()
    raw = s.scorer.predict_many(s.order(), s.label_map(), todo)
    expected = {i: int(np.argmax(row)) for i, row in zip(todo, normalize(raw, "centered", current.center()))}
    record = s.step()
    assert record.kind == "final_pass"
    assert {f.example: f.new for f in record.flips} == expected


def test_a_resumed_search_with_counters_decides_exactly_as_an_uninterrupted_one():
    settings = dict(n=12, clock="accepted", stop="labeled", steps=200)
    whole, _ = search(**settings)
    reference = [(r.kind, r.iteration, r.example, r.proposed_label, r.accepted, r.temperature, r.u_after) for r in run_all(whole)]
    first, _ = search(**settings)
    for _ in range(9):
        first.step()
    second = Search(first.scorer, first.config, first.snapshot())
    resumed = [(r.kind, r.iteration, r.example, r.proposed_label, r.accepted, r.temperature, r.u_after) for r in run_all(second)]
    assert reference[9:] == resumed
