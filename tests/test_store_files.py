"""Database files as users hand them to us: foreign, not DuckDB, old, read-only, edited data, dead owners."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from icm_engine.cli.run import ensure_dataset
from icm_engine.core.records import SearchSnapshot, StepRecord
from icm_engine.core.tasks import Example, Task
from icm_engine.store import database as store_module
from icm_engine.store.database import ForeignDatabaseError, Store, StoreError
from tests.old_databases import old_database

REPO = Path(__file__).resolve().parents[1]
TASK = Task(name="claims", template="Q: {question}\nA: {answer}\nCorrect:", fields=("question", "answer"))
EXAMPLES = [Example(uid=f"u{i}", fields={"question": f"q{i}", "answer": f"a{i}"}) for i in range(4)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def icm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "icm_engine.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_foreign_duckdb_file_is_named_and_left_byte_identical(tmp_path):
    path = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE runs (a INTEGER); CREATE TABLE datasets (b VARCHAR); INSERT INTO runs VALUES (1)")
    con.close()
    before = digest(path)
    with pytest.raises(ForeignDatabaseError, match=r"did not create \(tables: datasets, runs\)"):
        Store(str(path))
    for command in (["runs"], ["export", "--run", "1", "--out", str(tmp_path / "x.csv")]):
        out = icm(*command, "--db", str(path))
        assert out.returncode == 2 and "ICM Studio did not create" in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert digest(path) == before


def test_a_text_file_as_database_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n")
    with pytest.raises(ForeignDatabaseError, match="not a DuckDB database file"):
        Store(str(path))
    out = icm("runs", "--db", str(path))
    assert out.returncode == 2 and f"{path}: not a DuckDB database file" in out.stderr
    assert path.read_text() == "not a database\n"


def test_reading_commands_open_read_only_and_change_nothing(tmp_path):
    path = tmp_path / "icm.duckdb"
    with Store(str(path)) as s:
        s.add_dataset("claims", TASK.to_dict(), EXAMPLES, None)
    before = digest(path)
    with Store.existing(str(path)) as s:
        assert s.read_only and len(s.datasets()) == 1
        with pytest.raises(duckdb.Error, match="read-only"):
            s.add_dataset("again", TASK.to_dict(), EXAMPLES, None)
    assert icm("runs", "--db", str(path)).stdout.strip() == "no runs yet"
    assert digest(path) == before


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_an_older_file_is_read_untouched_and_upgraded_only_by_a_writing_open(tmp_path, version):
    path = tmp_path / "old.duckdb"
    old_database(path, version)
    before = digest(path)
    with Store.existing(str(path)) as s:  # a reading command reads it as it is
        assert s.run(1)["status"] == "created" and s.run(1)["owner"] is None
        assert [ex.uid for ex in s.load_examples(1)] == ["u0", "u1"] and s.load_snapshot(1) is None
    assert icm("runs", "--db", str(path)).returncode == 0
    assert digest(path) == before
    with Store(str(path)) as s:  # a writing open upgrades it, marker and all, and keeps its loads
        assert s._rows("SELECT version FROM schema_version") == [(store_module.SCHEMA_VERSION,)]
        assert s._rows("SELECT marker FROM icm_studio") == [(store_module.MARKER,)]
        assert s._rows("SELECT content_hash FROM datasets") == [(None,)]  # no hash: never reused blindly
        assert s.run(1)["name"] == "old run"


# set_param events as releases before schema 5 wrote them: (iteration, note)
OLD_NOTES = [(3, "alpha=0.5, t0=2"), (3, "t0=0.123457"), (5, "steps=40 (extended by 5)"), (6, ""), (7, "beta=2")]
# what they become: (seq, ord, iteration, parameter, old_value, new_value); no value before was written
OLD_NOTE_ROWS = [(0, 0, 3, "alpha", None, 0.5), (0, 1, 3, "t0", None, 2.0), (1, 0, 3, "t0", None, 0.123457),
                 (2, 0, 5, "steps", None, 40.0), (2, 1, 5, "extended_until", None, 10.0)]


def param_rows(store: Store) -> list[tuple]:
    return [(r.seq, r.ord, r.iteration, r.parameter, None if r.old_value != r.old_value else r.old_value, r.new_value)
            for r in store.param_changes(1).itertuples()]


@pytest.mark.parametrize("version", [4, 1])
def test_an_older_files_set_param_notes_become_parameter_rows_once(tmp_path, version):
    """The one place a note is parsed: the migration to schema 5, in memory for a reading open (the
    file stays byte for byte), in the file for a writing one; a note no release wrote gives no rows."""
    path = tmp_path / "old.duckdb"
    old_database(path, version, OLD_NOTES)
    before = digest(path)
    with Store.existing(str(path)) as s:
        assert param_rows(s) == OLD_NOTE_ROWS
    assert digest(path) == before
    with Store(str(path)) as s:
        assert s._rows("SELECT version FROM schema_version") == [(store_module.SCHEMA_VERSION,)]
        assert param_rows(s) == OLD_NOTE_ROWS
        assert list(s.events(1)["note"]) == [note for _, note in OLD_NOTES]  # the notes stay, for people
    with Store(str(path)) as s:  # upgraded once: opening again reads the rows, and adds none
        assert param_rows(s) == OLD_NOTE_ROWS


@pytest.mark.parametrize("version", [5, 1])
def test_steps_written_before_schema_6_read_their_reused_tokens_as_not_recorded(tmp_path, version):
    """events.tokens_reused: NULL for an older file's events, read-only (the file stays byte for byte)
    and upgraded; steps written after the upgrade record it, and a new file has the column too."""
    path = tmp_path / "old.duckdb"
    old_database(path, version, [(0, "")])
    before = digest(path)
    with Store.existing(str(path)) as s:
        assert s.events(1)["tokens_reused"].isna().tolist() == [True]
        assert list(s.events(1).columns)[-1] == "tokens_reused"  # where the upgrade puts it
    assert digest(path) == before
    with Store(str(path)) as s:
        assert s.events(1)["tokens_reused"].isna().tolist() == [True]
        s.record_step(1, StepRecord(iteration=1, kind="propose", model_calls=2, tokens_forwarded=30, tokens_reused=90),
                      SearchSnapshot(iteration=1, labels={}, excluded=set(), rng_state={}, next_position=0, alpha=1.0, t0=1.0))
    with Store.existing(str(path)) as s:
        reused = s.events(1)["tokens_reused"]
        assert reused.isna().tolist() == [True, False] and int(reused.iloc[1]) == 90
    with Store(str(tmp_path / "new.duckdb")) as s:
        assert "tokens_reused" in s.events(1).columns


def test_an_old_note_that_no_release_wrote_gives_no_changes():
    from icm_engine.core.records import ParamChange
    from icm_engine.store.old_notes import param_changes_from_note

    assert param_changes_from_note("alpha=0.1, t0=2", 4) == [ParamChange("alpha", None, 0.1), ParamChange("t0", None, 2.0)]
    assert param_changes_from_note("steps=40 (extended by 5)", 35) == [
        ParamChange("steps", None, 40.0), ParamChange("extended_until", None, 40.0)]
    assert param_changes_from_note("", 0) == []  # set_params() with nothing given
    for note in ("beta=2", "alpha=x", "alpha 2", "steps=40", "alpha=1,t0=2"):
        assert param_changes_from_note(note, 0) is None, note


def test_an_old_schema_with_anything_changed_is_not_taken_for_ours(tmp_path):
    """Recognised by the exact schema: one column more, or a version that does not match it, is someone else's."""
    for n, change in enumerate(("ALTER TABLE runs ADD COLUMN theirs INTEGER", "UPDATE schema_version SET version = 1",
                                "INSERT INTO schema_version VALUES (3)", "CREATE TABLE notes (t VARCHAR)")):
        path = tmp_path / f"changed{n}.duckdb"
        old_database(path, 3)
        con = duckdb.connect(str(path))
        con.execute(change)
        con.close()
        before = digest(path)
        for read_only in (True, False):
            with pytest.raises(ForeignDatabaseError, match="ICM Studio did not create"):
                Store(str(path), read_only=read_only)
        assert digest(path) == before, change


def test_a_load_is_identified_by_its_content_not_its_path(tmp_path):
    """A file edited in place with the same number of rows is new data, old gold and all."""
    table = tmp_path / "reviews.csv"
    table.write_text("text,gold\nGreat food.,1\nCold soup.,0\n")
    with Store(str(tmp_path / "icm.duckdb")) as s:
        first = ensure_dataset(s, str(table), "sentiment_single", None)
        assert ensure_dataset(s, str(table), "sentiment_single", None) == first
        copy = tmp_path / "elsewhere" / "reviews.csv"  # ids derive from the file's name, so keep it
        copy.parent.mkdir()
        copy.write_bytes(table.read_bytes())
        assert ensure_dataset(s, str(copy), "sentiment_single", None) == first  # same content elsewhere
        table.write_text("text,gold\nGreat food.,0\nWarm soup.,1\n")
        edited = ensure_dataset(s, str(table), "sentiment_single", None)
        assert edited != first
        texts = {ex.fields["text"] for ex in s.load_examples(edited)}
        assert "Warm soup." in texts and "Cold soup." not in texts
        assert sorted(s.load_gold(edited).values()) != [] and s.load_gold(edited) != s.load_gold(first)


def test_a_run_left_running_by_a_dead_process_reads_interrupted_and_resumes(tmp_path):
    path = tmp_path / "icm.duckdb"
    with Store(str(path)) as s:
        run_id = s.create_run(s.add_dataset("claims", TASK.to_dict(), EXAMPLES, None), {}, {})
        s.set_status(run_id, "running")
        assert s.run(run_id)["status"] == "running"  # this process runs it
    dies = textwrap.dedent(f"""
        import os
        from icm_engine.store.database import Store
        s = Store({str(path)!r})
        s.set_status({run_id}, "running")
        s.close()
        os._exit(0)  # as if killed: nobody sets it back
    """)
    subprocess.run([sys.executable, "-c", dies], cwd=REPO, check=True, timeout=60)
    with Store(str(path)) as s:
        assert s.run(run_id)["status"] == store_module.INTERRUPTED
        assert list(s.runs()["status"]) == [store_module.INTERRUPTED]
    assert " interrupted " in icm("runs", "--db", str(path)).stdout


def test_a_mistyped_database_for_a_reading_command_is_one_line(tmp_path):
    missing = tmp_path / "typo.duckdb"
    out = icm("runs", "--db", str(missing))
    assert out.returncode == 2 and f"{missing}: no such database" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not missing.exists()
    with pytest.raises(StoreError, match="no such database"):
        Store.existing(str(missing))
