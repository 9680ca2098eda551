"""Replaying a stored run redoes every event, a person's steering included, and checks each one;
a run that does not reproduce is named at its first different decision."""
from __future__ import annotations

import duckdb
import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.cli.entry import main
from icm_engine.core.config import RunConfig, SearchConfig
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


def test_alpha_t0_and_two_extensions_are_stored_as_rows_and_replayed_from_them():
    """No note is read: the replay sets alpha and T0 and extends the budget from the parameter rows,
    and reproduces every row, the values before included (the second extension raises a cap the
    first had raised: the replay must start it where the run had it)."""
    store = Store(":memory:")
    backend = FakeLM(strength=6)
    examples, gold = polarity_examples(10, seed=2, paired=True)
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, gold)
    config = RunConfig(task=PAIRED.name, dataset="polarity", search=SearchConfig(seed=3, steps=6, k_init=4, stop="steps"))
    run_id = create_run(store, dataset_id, config, backend)
    search = open_search(store, run_id, backend)
    advance(store, run_id, search, max_steps=3)
    record_steering(store, run_id, search, search.set_params(alpha=1 / 3, t0=2.5))
    advance(store, run_id, search)
    extend(store, run_id, search, 2)
    advance(store, run_id, search)
    extend(store, run_id, search, 3)
    advance(store, run_id, search)

    rows = store.param_changes(run_id)
    as_tuples = [(int(r.iteration), r.parameter, None if r.old_value != r.old_value else r.old_value, r.new_value)
                 for r in rows.itertuples()]
    assert as_tuples == [(2, "alpha", config.search.alpha, 1 / 3), (2, "t0", config.search.t0, 2.5),
                         (6, "steps", 6.0, 8.0), (6, "extended_until", None, 8.0),
                         (8, "steps", 8.0, 11.0), (8, "extended_until", 8.0, 11.0)]
    assert set(rows["seq"]) <= set(store.events(run_id).query("kind == 'set_param'")["seq"])

    replayed, report = replay(store, run_id, FakeLM(strength=6))
    assert report.events == len(store.events(run_id)) and report.largest_difference == 0.0
    assert (replayed.alpha, replayed.t0, replayed.config.steps, replayed.iteration) == (1 / 3, 2.5, 11, 11)
    assert replayed.progress.extended_until == 11
    # the note is for people: the replay redoes the event from the rows, and only compares the note it writes
    store._rows("UPDATE events SET note = 'read by nobody' WHERE kind = 'set_param'")
    with pytest.raises(ReplayDiverged, match=r"note is 'alpha=0.3333333333333333, t0=2.5' replayed, 'read by nobody'"):
        replay(store, run_id, FakeLM(strength=6))


def test_a_run_stored_by_schema_4_replays_from_its_migrated_notes(tmp_path):
    """The same steered run as version 4 kept it (no parameter rows, values only in the notes, no reused tokens):
    upgraded, its notes become rows without values before, and it replays bit for bit."""
    path = str(tmp_path / "v4.duckdb")
    with Store(path) as store:
        run_id = _steered_run(store, FakeLM(strength=6))
        written = store.param_changes(run_id)
    con = duckdb.connect(path)
    con.execute("DROP TABLE param_changes; ALTER TABLE events DROP COLUMN tokens_reused; UPDATE schema_version SET version = 4")
    con.close()
    with Store(path) as store:
        migrated = store.param_changes(run_id)
        assert migrated.drop(columns="old_value").equals(written.drop(columns="old_value"))
        assert migrated["old_value"].isna().all() and written["old_value"].notna().sum() == 3
        _, report = replay(store, run_id, FakeLM(strength=6))
        assert report.events == len(store.events(run_id)) and report.largest_difference == 0.0


def test_a_replay_that_changes_a_parameter_differently_is_named():
    store = Store(":memory:")
    run_id = _steered_run(store, FakeLM(strength=6))
    store._rows("UPDATE param_changes SET new_value = 0.5 WHERE parameter = 't0'")
    with pytest.raises(ReplayDiverged):  # the event's t0 is redone as stored, so the scores after it differ
        replay(store, run_id, FakeLM(strength=6))
    store._rows("UPDATE param_changes SET new_value = 2.5, old_value = 99 WHERE parameter = 't0'")
    with pytest.raises(ReplayDiverged, match=r"set_param\): parameters \[\['alpha'"):
        replay(store, run_id, FakeLM(strength=6))


def test_replay_command_needs_a_run_and_resume(tmp_path, capsys):
    assert main(["run", "--replay", "--db", str(tmp_path / "x.duckdb")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["replay", "--run", "1", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert not (tmp_path / "missing.duckdb").exists()
