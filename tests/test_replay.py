"""Replaying a stored run redoes every event, a person's steering included, and checks each one;
a run that does not reproduce is named at its first different decision."""
from __future__ import annotations

import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.cli.entry import main
from icm_engine.core.config import RunConfig, SearchConfig
from icm_engine.core.steering import set_param_arguments
from icm_engine.runs.replay import ReplayDiverged, replay
from icm_engine.runs.runner import advance, create_run, extend, open_search, record_steering
from icm_engine.store.database import Store
from tests.fakes import PAIRED, polarity_examples


def _steered_run(store: Store, backend) -> int:
    examples, gold = polarity_examples(10, seed=2, paired=True)
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, gold)
    config = RunConfig(task=PAIRED.name, dataset="polarity", search=SearchConfig(seed=3, steps=12, k_init=4))
    run_id = create_run(store, dataset_id, config, backend)
    search = open_search(store, run_id, backend)
    advance(store, run_id, search, max_steps=5)
    for action in (lambda: search.pin(3, 1), lambda: search.exclude(7), lambda: search.set_params(alpha=0.1234567891, t0=2.5)):
        record_steering(store, run_id, search, action())
    advance(store, run_id, search, max_steps=4)
    record_steering(store, run_id, search, search.unpin(3))
    record_steering(store, run_id, search, search.include(7))
    advance(store, run_id, search)
    extend(store, run_id, search, 3)
    advance(store, run_id, search)
    return run_id


def test_a_steered_run_replays_to_the_same_state_with_every_event_checked():
    store = Store(":memory:")
    run_id = _steered_run(store, FakeLM(strength=6))
    kinds = set(store.events(run_id)["kind"])
    assert {"init", "propose", "pin", "exclude", "set_param", "unpin", "include"} <= kinds

    search, report = replay(store, run_id, FakeLM(strength=6))
    assert report.events == len(store.events(run_id))
    assert report.largest_difference == 0.0 and "bit for bit" in report.summary()
    stored = open_search(store, run_id, FakeLM(strength=6))
    assert search.label_map() == stored.label_map() and search.excluded == stored.excluded
    assert search.alpha == 0.1234567891 and search.t0 == 2.5 and search.iteration == stored.iteration
    assert search.config.steps == stored.config.steps == 15
    assert search.rng.bit_generator.state == stored.rng.bit_generator.state


def test_other_scores_are_measured_and_other_decisions_named():
    store = Store(":memory:")
    run_id = _steered_run(store, FakeLM(strength=6))
    # a model a hair different: the same decisions, scores off in the last digits
    _, report = replay(store, run_id, FakeLM(strength=6 + 1e-9))
    assert 0 < report.largest_difference < 1e-6 and report.first_difference.startswith("event ")
    # another model altogether: a decision differs, and the replay says where
    with pytest.raises(ReplayDiverged, match=r"event \d+ \(iteration \d+, \w+\)"):
        replay(store, run_id, FakeLM(strength=-6))


def test_set_param_notes_read_back_exactly():
    from icm_engine.core.steering import _exact

    for value in (5.0, 0.1, 1 / 3, 1e-12, 123456789.125):
        assert float(_exact(value)) == value
    assert set_param_arguments(f"alpha={_exact(1 / 3)}, t0=2") == ("set_params", {"alpha": 1 / 3, "t0": 2.0})
    assert set_param_arguments("steps=40 (extended by 5)") == ("extend", {"steps": 5})
    with pytest.raises(ValueError):
        set_param_arguments("beta=2")


def test_replay_command_needs_a_run_and_resume(tmp_path, capsys):
    assert main(["run", "--replay", "--db", str(tmp_path / "x.duckdb")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["replay", "--run", "1", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert not (tmp_path / "missing.duckdb").exists()
