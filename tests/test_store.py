"""Store: datasets, steps, snapshots, locking and threads, over in-memory and temporary DuckDB files."""
from __future__ import annotations

import math
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icm_engine.core.records import Fix, Flip, LabelState, ParamChange, SearchSnapshot, StepRecord
from icm_engine.core.tasks import Example, Task
from icm_engine.store import database as store_module
from icm_engine.store.database import SchemaVersionError, Store, StoreError

REPO = Path(__file__).resolve().parents[1]
TASK = Task(name="claims", template="Q: {question}\nA: {answer}\nCorrect:", fields=("question", "answer"),
            rule="exclusive", group_field="question", key_field="answer")


def make_examples(n: int = 6) -> list[Example]:
    return [
        Example(uid=f"u{i}", fields={"question": f"q{i // 2}", "answer": f"a{i % 3}"}, group=f"q{i // 2}",
                key=None if i == 5 else f"a{i % 3}")
        for i in range(n)
    ]


@pytest.fixture
def store():
    with Store() as s:
        yield s


@pytest.fixture
def dataset(store):
    return store.add_dataset("claims", TASK.to_dict(), make_examples(), {0: 1, 1: 0, 4: 1}, source="test")


def count(store: Store, table: str) -> int:
    return store._rows(f"SELECT count(*) FROM {table}")[0][0]


def step(iteration: int, flips: list[Flip], labels: dict[int, LabelState], rng_state=None, kind="propose"):
    record = StepRecord(
        iteration=iteration, kind=kind, temperature=10 / (1 + 0.99 * math.log(iteration + 1)), example=2,
        old_label=None, proposed_label=1, proposal_logp=(-0.6931471805599453, -0.6931471805599454),
        fixes=[Fix(pair=(2, 3), before=(1, 1), after=(1, 0), applied=True, u_before=-3.5, u_after=-1.25)],
        u_before=-3.5, u_after=-1.25, ap_before=-175.0, ap_after=-62.5, i_before=1, i_after=0, delta=2.25,
        accept_prob=1.0, draw=0.123456789, accepted=True, flips=flips, labeled_count=len(labels),
        model_calls=3, tokens_forwarded=1234, seconds=0.5, note="n",
    )
    snapshot = SearchSnapshot(
        iteration=iteration, labels=labels, excluded={5}, rng_state=rng_state or {"seed": iteration},
        next_position=len(labels), alpha=50.0, t0=10.0, u=-1.25, ap=-62.5, inconsistencies=0,
    )
    return record, snapshot


# -- datasets ---------------------------------------------------------------------------


def test_dataset_round_trip(store, dataset):
    assert store.load_examples(dataset) == make_examples()
    assert Task.from_dict(store.dataset_task(dataset)) == TASK
    row = store.datasets().iloc[0]
    assert (row["name"], row["source"], row["n_examples"], bool(row["has_gold"]), row["n_runs"]) == ("claims", "test", 6, True, 0)


def test_gold_is_stored_apart(store, dataset):
    assert store.load_gold(dataset) == {0: 1, 1: 0, 4: 1}
    assert all(set(vars(ex)) == {"uid", "fields", "group", "key"} for ex in store.load_examples(dataset))
    assert store._rows("SELECT count(*) FROM examples WHERE fields_json LIKE '%label%'")[0][0] == 0
    no_gold = store.add_dataset("unlabeled", TASK.to_dict(), make_examples(2), None)
    assert store.load_gold(no_gold) is None and count(store, "gold") == 3


def test_add_dataset_progress_reaches_one(store, monkeypatch):
    monkeypatch.setattr(store_module, "_CHUNK", 4)
    seen = []
    store.add_dataset("big", TASK.to_dict(), make_examples(10), None, progress=seen.append)
    assert seen == [0.4, 0.8, 1.0]
    assert [ex.uid for ex in store.load_examples(1)] == [f"u{i}" for i in range(10)]


class Unstorable:
    pass


@pytest.mark.parametrize("case", ["bad_fields_mid_way", "missing_field", "progress_raises", "gold_out_of_range"])
def test_failed_add_dataset_leaves_nothing(store, monkeypatch, case):
    monkeypatch.setattr(store_module, "_CHUNK", 2)  # so earlier chunks are inserted before the failure
    examples, gold, progress = make_examples(), {0: 1}, None
    if case == "bad_fields_mid_way":
        examples[4] = Example(uid="bad", fields={"question": "q", "answer": Unstorable()})
    elif case == "missing_field":
        examples[3] = Example(uid="bad", fields={"question": "q"})
    elif case == "progress_raises":
        def progress(fraction):
            if fraction > 0.5:
                raise KeyboardInterrupt  # a user cancelling a big load
    else:
        gold = {0: 1, 6: 0}
    with pytest.raises((ValueError, KeyboardInterrupt)):
        store.add_dataset("broken", TASK.to_dict(), examples, gold, progress=progress)
    assert store.datasets().empty
    assert count(store, "examples") == count(store, "gold") == 0
    assert store.add_dataset("ok", TASK.to_dict(), make_examples(), None) > 0  # the store still works


def test_duplicate_primary_key_rolls_back_everything(store, dataset):
    # A constraint violation inside the transaction (here a clashing dataset_id) must undo all of it.
    store._rows("DROP SEQUENCE dataset_ids")
    store._rows("CREATE SEQUENCE dataset_ids START 1")  # the next id collides with dataset 1
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        store.add_dataset("clash", TASK.to_dict(), make_examples(), {0: 1})
    assert len(store.datasets()) == 1 and count(store, "examples") == 6 and count(store, "gold") == 3


def test_delete_dataset_refuses_while_runs_use_it(store, dataset):
    run_id = store.create_run(dataset, {"search": {"seed": 7}}, {"name": "fake"})
    with pytest.raises(ValueError, match="runs"):
        store.delete_dataset(dataset)
    store.delete_run(run_id)
    store.delete_dataset(dataset)
    assert store.datasets().empty and count(store, "examples") == count(store, "gold") == 0


# -- runs and steps -----------------------------------------------------------------------


def test_create_run_and_status(store, dataset):
    run_id = store.create_run(dataset, {"task": "claims", "search": {"seed": 7}}, {"name": "fake", "device": "cpu"})
    run = store.run(run_id)
    assert (run["status"], run["seed"], run["name"], run["last_iteration"]) == ("created", 7, f"run {run_id}", None)
    assert run["config"] == {"task": "claims", "search": {"seed": 7}} and run["model"]["device"] == "cpu"
    store.set_status(run_id, "failed", error="boom")
    assert (store.run(run_id)["status"], store.run(run_id)["error"]) == ("failed", "boom")
    store.set_status(run_id, "running")
    assert store.run(run_id)["error"] is None
    with pytest.raises(ValueError):
        store.set_status(run_id, "exploded")
    child = store.create_run(dataset, {}, {}, name="fork", parent_run_id=run_id)
    runs = store.runs(dataset)
    assert list(runs["run_id"]) == [run_id, child] and runs["parent_run_id"].iloc[1] == run_id
    assert list(runs["dataset_name"]) == ["claims", "claims"]
    with pytest.raises(KeyError):
        store.create_run(999, {}, {})


def test_record_step_writes_one_event_and_one_flip_per_flip(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    labels = {0: LabelState(1, 0, (-2.0, -0.1)), 2: LabelState(1, 1), 3: LabelState(0, 2, pinned=True)}
    flips = [Flip(2, None, 1, "proposal"), Flip(3, 1, 0, "fix", partner=2), Flip(2, 1, 1, "fix", partner=3)]
    store.record_step(run_id, *step(4, flips, labels))
    assert count(store, "events") == 1 and count(store, "flips") == 3
    event = store.events(run_id).iloc[0]
    assert (event["seq"], event["iteration"], event["kind"], bool(event["accepted"]), event["delta"]) == (0, 4, "propose", True, 2.25)
    assert '"pair": [2, 3]' in event["fixes_json"]
    flips_df = store.flips(run_id)
    assert list(flips_df["example"]) == [2, 3, 2] and list(flips_df["cause"]) == ["proposal", "fix", "fix"]
    assert flips_df["old_label"].isna().iloc[0] and flips_df["partner"].iloc[1] == 2
    run = store.run(run_id)
    assert (run["status"], run["last_iteration"], run["last_seq"]) == ("running", 4, 0)
    with pytest.raises(ValueError):
        store.record_step(run_id, *step(5, [Flip(99, None, 1, "proposal")], labels))
    assert count(store, "events") == 1  # the bad step left nothing behind


def test_steering_event_keeps_paused_status(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    store.record_step(run_id, *step(0, [], {0: LabelState(1, 0)}, kind="init"))
    store.set_status(run_id, "paused")
    store.record_step(run_id, *step(0, [], {0: LabelState(1, 0, pinned=True)}, kind="pin"))
    assert store.run(run_id)["status"] == "paused"
    assert list(store.events(run_id)["seq"]) == [0, 1] and list(store.events(run_id)["iteration"]) == [0, 0]


def test_a_set_param_events_changes_are_rows_written_with_it(store, dataset):
    """alpha, T0 and the step budget as (parameter, old, new) rows of their event, in order, exact;
    a step that refuses to be written leaves none, and deleting the run removes them."""
    run_id = store.create_run(dataset, {}, {})
    store.record_step(run_id, *step(0, [], {0: LabelState(1, 0)}, kind="init"))
    record, snapshot = step(3, [], {0: LabelState(1, 0)}, kind="set_param")
    record.params = [ParamChange("alpha", 50.0, 1 / 3), ParamChange("t0", 10.0, 2.5)]
    store.record_step(run_id, record, snapshot)
    record, snapshot = step(7, [], {0: LabelState(1, 0)}, kind="set_param")
    record.params = [ParamChange("steps", 12, 15), ParamChange("extended_until", None, 15)]
    store.record_step(run_id, record, snapshot)
    rows = store.param_changes(run_id)
    assert rows.columns.tolist() == ["run_id", "seq", "ord", "iteration", "parameter", "old_value", "new_value"]
    assert [tuple(r) for r in rows[["seq", "ord", "iteration", "parameter", "new_value"]].itertuples(index=False)] == [
        (1, 0, 3, "alpha", 1 / 3), (1, 1, 3, "t0", 2.5), (2, 0, 7, "steps", 15.0), (2, 1, 7, "extended_until", 15.0)]
    assert rows["old_value"].tolist()[:3] == [50.0, 10.0, 12.0] and pd.isna(rows["old_value"].iloc[3])
    for kind, change in (("pin", ParamChange("alpha", 1.0, 2.0)), ("set_param", ParamChange("beta", 1.0, 2.0))):
        record, snapshot = step(8, [], {0: LabelState(1, 0)}, kind=kind)
        record.params = [change]
        with pytest.raises(ValueError, match="changes parameters"):
            store.record_step(run_id, record, snapshot)
    assert len(store.param_changes(run_id)) == 4 and len(store.events(run_id)) == 3
    with pytest.raises(AttributeError):  # a record of what happened: not edited afterwards
        ParamChange("alpha", 1.0, 2.0).new = 3.0
    store.delete_run(run_id)
    assert count(store, "param_changes") == 0


def test_snapshot_round_trip_is_exact(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    assert store.load_snapshot(run_id) is None
    generator = np.random.default_rng(12345)
    generator.random(3)
    tricky = {0: LabelState(1, 3, (0.1 + 0.2, -1e-300)), 1: LabelState(0, 0, (-math.pi, -math.inf)),
              4: LabelState(1, 1, None, pinned=True)}
    record, snapshot = step(9, [], tricky, rng_state=generator.bit_generator.state)
    snapshot.u, snapshot.ap, snapshot.inconsistencies = 1 / 3, None, None
    store.record_step(run_id, record, snapshot)
    loaded = store.load_snapshot(run_id)
    assert loaded == snapshot
    assert loaded.labels[0].logp == (0.30000000000000004, -1e-300) and isinstance(loaded.labels[0].logp, tuple)
    resumed = np.random.default_rng()
    resumed.bit_generator.state = loaded.rng_state
    assert resumed.random(5).tolist() == generator.random(5).tolist()


def test_rng_states_with_tuples_and_arrays_come_back_usable(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    py_rng, mt = random.Random(3), np.random.Generator(np.random.MT19937(3))
    state = {"python": py_rng.getstate(), "mt": mt.bit_generator.state}
    store.record_step(run_id, *step(1, [], {}, rng_state=state))
    loaded = store.load_snapshot(run_id).rng_state
    assert loaded["python"] == py_rng.getstate()
    again = random.Random()
    again.setstate(loaded["python"])
    assert again.random() == py_rng.random()
    mt_again = np.random.Generator(np.random.MT19937())
    mt_again.bit_generator.state = loaded["mt"]
    assert mt_again.random() == mt.random()


def test_events_since_seq(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    other = store.create_run(dataset, {}, {})
    for i in range(5):
        store.record_step(run_id, *step(i, [], {0: LabelState(1, 0)}))
    store.record_step(other, *step(0, [], {}))
    assert list(store.events(run_id)["seq"]) == [0, 1, 2, 3, 4]
    assert list(store.events(run_id, since_seq=2)["seq"]) == [3, 4]
    assert store.events(run_id, since_seq=4).empty
    assert list(store.events(other)["seq"]) == [0]


def test_labels_with_n_flips_and_history(store, dataset):
    run_id = store.create_run(dataset, {}, {})
    store.record_step(run_id, *step(0, [Flip(0, None, 1, "initial"), Flip(2, None, 0, "initial")],
                                    {0: LabelState(1, 0), 2: LabelState(0, 1)}, kind="init"))
    store.record_step(run_id, *step(1, [Flip(2, 0, 1, "proposal"), Flip(3, None, 0, "fix", partner=2)],
                                    {0: LabelState(1, 0), 2: LabelState(1, 1, (-1.5, -0.25)), 3: LabelState(0, 2)}))
    labels = store.labels(run_id)
    assert list(labels["example"]) == [0, 2, 3] and list(labels["uid"]) == ["u0", "u2", "u3"]
    assert list(labels["n_flips"]) == [1, 2, 1] and list(labels["label"]) == [1, 1, 0]
    assert labels["logp_true"].iloc[1] == -0.25 and '"question": "q1"' in labels["fields_json"].iloc[1]
    history = store.label_history(run_id, 2)
    assert list(history["cause"]) == ["initial", "proposal"] and list(history["kind"]) == ["init", "propose"]
    assert list(history["new_label"]) == [0, 1] and history["delta"].iloc[1] == 2.25
    assert list(store.flips(run_id, example=3)["partner"]) == [2]


def test_save_and_read_eval(store):
    results = pd.DataFrame({"method": ["icm", "zero-shot"], "seed": [0, 1], "accuracy": [0.75, 0.5],
                            "n_test": [100, 100], "n_demos": [8, 0], "model": ["m", "m"]})
    eval_id = store.save_eval("table1", {"tasks": ["claims"]}, results)
    assert store.evals()["n_rows"].tolist() == [2]
    rows = store.eval_rows(eval_id)
    assert rows["method"].tolist() == ["icm", "zero-shot"] and rows["accuracy"].tolist() == [0.75, 0.5]
    assert rows["model"].tolist() == ["m", "m"] and rows["n_demos"].tolist() == [8, 0]


# -- files, processes, threads ------------------------------------------------------------


def test_file_store_persists_and_checks_schema_version(tmp_path):
    path = tmp_path / "sub" / "icm.duckdb"
    with Store(str(path)) as s:
        dataset = s.add_dataset("claims", TASK.to_dict(), make_examples(), {0: 1})
    with Store(str(path)) as s:
        assert s.load_examples(dataset) == make_examples()
        s._rows("UPDATE schema_version SET version = ?", [store_module.SCHEMA_VERSION + 1])
    with pytest.raises(SchemaVersionError, match="newer"):
        Store(str(path))
    with pytest.raises(StoreError, match="closed"):
        s.datasets()


def test_second_process_cannot_open_a_held_file(tmp_path):
    path = str(tmp_path / "held.duckdb")
    probe = textwrap.dedent(f"""
        from icm_engine.store.database import Store, StoreLockedError
        try:
            Store({path!r}).close()
            print("OPENED")
        except StoreLockedError as exc:
            print("LOCKED", exc)
    """)
    with Store(path) as held:
        held.add_dataset("claims", TASK.to_dict(), make_examples(), None)
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.stdout.startswith("LOCKED"), out.stdout + out.stderr
        assert "run manager" in out.stdout and "stop the app" in out.stdout.lower()
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("OPENED"), out.stdout + out.stderr


def test_writer_and_reader_threads(tmp_path):
    with Store(str(tmp_path / "threads.duckdb")) as s:
        dataset = s.add_dataset("claims", TASK.to_dict(), make_examples(), None)
        run_id = s.create_run(dataset, {}, {})
        errors: list[BaseException] = []
        done = threading.Event()

        def writer():
            try:
                for i in range(50):
                    labels = {e: LabelState(i % 2, e, (-0.5, -1.0)) for e in range(i % 6)}
                    s.record_step(run_id, *step(i, [Flip(i % 6, None, i % 2, "proposal")], labels))
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        def reader():
            seen = -1
            try:
                while not done.is_set():
                    new = s.events(run_id, since_seq=seen)
                    assert list(new["seq"]) == list(range(seen + 1, seen + 1 + len(new)))
                    seen = int(new["seq"].max()) if len(new) else seen
                    s.labels(run_id), s.load_snapshot(run_id), s.runs()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert len(s.events(run_id)) == 50 and len(s.flips(run_id)) == 50
        assert s.load_snapshot(run_id).iteration == 49
