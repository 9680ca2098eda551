"""The one module that talks to DuckDB: datasets, runs, every search step, evaluations.

DuckDB lets one process hold a database file read-write, and while it does no other
process can open the file even read-only. So a process owns one Store per file and shares
it between threads (the app's worker thread writes, page threads read): one connection,
every statement under one re-entrant lock, results handed out as fresh DataFrames.

Gold labels live in their own table and only `load_gold` reads them; nothing the search
calls touches it. Examples are addressed by `idx`, their 0-based load order, which is also
what flips, labels and events call an "example".
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import socket
import tempfile
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import duckdb
import pandas as pd

from ..core.errors import InputError
from ..core.records import EVENT_KINDS, FLIP_CAUSES, PARAMETERS, LabelState, SearchProgress, SearchSnapshot, StepRecord
from ..core.tasks import Example, Task
from .json_values import json_value, tag_state, to_json, untag_state
from .old_notes import param_changes_from_note

# 2: run_state.progress_json (the clock's and the stopping rule's counters)
# 3: datasets.content_hash (a load is identified by its content), runs.owner (who runs it)
# 4: the table icm_studio holding MARKER: a file is ours by that row, which no other tool writes,
#    not by table names other tools use too (schema_version is a common one)
# 5: the table param_changes: what a set_param event changed (alpha, T0, the step budget), one row
#    per parameter; an older file's notes are read into it once, when it is upgraded
# 6: events.tokens_reused, the prompt tokens a prefix store served in the step (NULL for steps
#    written before: their cost was not recorded)
SCHEMA_VERSION = 6
_PARAM_CHANGES_SINCE = 5
MARKER = "ICM Studio database 7d0f2c61-3b4e-4f0a-9c55-1e8a9b2d4f63"
# What versions 2 and 3 added: a file of 1..3 carries no marker, so it is recognised by its exact
# schema (the current one less these columns) and upgraded by adding them.
_ADDED_COLUMNS = {2: (("run_state", "progress_json", "VARCHAR"),),
                  3: (("datasets", "content_hash", "VARCHAR"), ("runs", "owner", "VARCHAR"))}
# What versions after the marker added to tables of _TABLES: kept out of it (it must stay the schema
# of 1..3), so every file gets them by ALTER TABLE, a new one too, and a read-only open shows them as NULL.
_LATER_COLUMNS = {6: (("events", "tokens_reused", "BIGINT"),)}
RUN_STATUSES = ("created", "running", "paused", "stopped", "finished", "failed")
# Not stored: what a 'running' run reads as when the process running it is gone.
INTERRUPTED = "interrupted"
# This process, as recorded in runs.owner while it runs a search. DuckDB lets one process hold
# a file, so a run marked running by any other process was left so by one that died.
PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
EVAL_COLUMNS = ("method", "seed", "accuracy", "n_test", "n_demos")  # the rest of a row goes to extra_json
_CHUNK = 10_000  # examples per insert in add_dataset: bounds memory and paces progress()

# Timestamps are naive TIMESTAMPs holding UTC: TIMESTAMPTZ would hand pandas values in the
# session's local zone, and the same file is read on machines with different zones.
_TABLES = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE SEQUENCE IF NOT EXISTS dataset_ids START 1;
CREATE SEQUENCE IF NOT EXISTS run_ids START 1;
CREATE SEQUENCE IF NOT EXISTS eval_ids START 1;
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, task_json VARCHAR NOT NULL,
    source VARCHAR NOT NULL, n_examples INTEGER NOT NULL, has_gold BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL, content_hash VARCHAR);
CREATE TABLE IF NOT EXISTS examples (
    dataset_id INTEGER NOT NULL, idx INTEGER NOT NULL, uid VARCHAR NOT NULL,
    fields_json VARCHAR NOT NULL, group_key VARCHAR, cons_key VARCHAR,
    PRIMARY KEY (dataset_id, idx));
CREATE TABLE IF NOT EXISTS gold (
    dataset_id INTEGER NOT NULL, idx INTEGER NOT NULL, label TINYINT NOT NULL,
    PRIMARY KEY (dataset_id, idx));
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL, name VARCHAR NOT NULL,
    config_json VARCHAR NOT NULL, model_json VARCHAR NOT NULL, seed BIGINT,
    status VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    last_iteration INTEGER, last_seq INTEGER NOT NULL, error VARCHAR, parent_run_id INTEGER, owner VARCHAR);
CREATE TABLE IF NOT EXISTS run_state (
    run_id INTEGER PRIMARY KEY, iteration INTEGER NOT NULL, rng_state_json VARCHAR NOT NULL,
    excluded_json VARCHAR NOT NULL, next_position INTEGER NOT NULL, alpha DOUBLE NOT NULL,
    t0 DOUBLE NOT NULL, u DOUBLE, ap DOUBLE, inconsistencies INTEGER, progress_json VARCHAR);
CREATE TABLE IF NOT EXISTS events (
    run_id INTEGER NOT NULL, iteration INTEGER NOT NULL, seq INTEGER NOT NULL,
    kind VARCHAR NOT NULL, temperature DOUBLE, example INTEGER, old_label TINYINT,
    proposed_label TINYINT, proposal_logp_json VARCHAR, fixes_json VARCHAR NOT NULL,
    u_before DOUBLE, u_after DOUBLE, ap_before DOUBLE, ap_after DOUBLE,
    i_before INTEGER, i_after INTEGER, delta DOUBLE, accept_prob DOUBLE, draw DOUBLE,
    accepted BOOLEAN NOT NULL, labeled_count INTEGER NOT NULL, model_calls BIGINT NOT NULL,
    tokens_forwarded BIGINT NOT NULL, seconds DOUBLE NOT NULL, note VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS flips (
    run_id INTEGER NOT NULL, iteration INTEGER NOT NULL, seq INTEGER NOT NULL,
    ord INTEGER NOT NULL, example INTEGER NOT NULL, old_label TINYINT, new_label TINYINT,
    cause VARCHAR NOT NULL, partner INTEGER, PRIMARY KEY (run_id, seq, ord));
CREATE TABLE IF NOT EXISTS labels (
    run_id INTEGER NOT NULL, example INTEGER NOT NULL, label TINYINT NOT NULL,
    position INTEGER NOT NULL, logp_false DOUBLE, logp_true DOUBLE, pinned BOOLEAN NOT NULL,
    PRIMARY KEY (run_id, example));
CREATE TABLE IF NOT EXISTS eval_runs (
    eval_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL, config_json VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS eval_rows (
    eval_id INTEGER NOT NULL, row_no INTEGER NOT NULL, method VARCHAR, seed BIGINT,
    accuracy DOUBLE, n_test INTEGER, n_demos INTEGER, extra_json VARCHAR NOT NULL,
    PRIMARY KEY (eval_id, row_no));
"""
# The events columns in the order record_step writes them: named, as a column added by ALTER TABLE
# comes last in an upgraded file and wherever a later version puts it in a new one.
_EVENT_COLUMNS = ("run_id", "iteration", "seq", "kind", "temperature", "example", "old_label", "proposed_label",
                  "proposal_logp_json", "fixes_json", "u_before", "u_after", "ap_before", "ap_after", "i_before",
                  "i_after", "delta", "accept_prob", "draw", "accepted", "labeled_count", "model_calls",
                  "tokens_forwarded", "seconds", "note", "created_at", "tokens_reused")
# Kept out of _TABLES, which must stay the schema of versions 1..3 (they are recognised by it).
_PARAM_CHANGES_COLUMNS = """(
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, ord INTEGER NOT NULL, iteration INTEGER NOT NULL,
    parameter VARCHAR NOT NULL, old_value DOUBLE, new_value DOUBLE NOT NULL, PRIMARY KEY (run_id, seq, ord))"""
_SCHEMA = (_TABLES + f"CREATE TABLE IF NOT EXISTS param_changes {_PARAM_CHANGES_COLUMNS};\n"
           "CREATE TABLE IF NOT EXISTS icm_studio (marker VARCHAR NOT NULL);\n")
# Foreign keys are left out on purpose: DuckDB rewrites an UPDATE as delete+insert, which a
# referenced row refuses, and runs is updated every step. Store keeps references itself.


class StoreError(InputError, RuntimeError):
    """A database file that cannot be used as asked: missing, locked, foreign, newer, or no such run in it."""


class NotFoundError(StoreError, KeyError):
    """No run (dataset, evaluation) with that id. A KeyError too, as a lookup that fails."""


class StoreLockedError(StoreError):
    """Another process holds the database file."""


class SchemaVersionError(StoreError):
    """The file was written by a newer ICM Studio than this one."""


class ForeignDatabaseError(StoreError):
    """The file is not an ICM Studio database; it is left as it was."""


def content_hash(task: dict, examples: list[Example], gold: dict[int, int] | None) -> str:
    """What identifies a load: the task, every example's inputs, group and key, and gold. Two loads
    with the same hash are the same data, whatever file or path they came from."""
    def encoded(value) -> bytes:  # repr for what JSON cannot hold: add_dataset refuses those itself
        return json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False).encode()

    digest = hashlib.sha256(encoded(task))
    for ex in examples:
        digest.update(encoded([str(ex.uid), dict(ex.fields), ex.group and str(ex.group), ex.key and str(ex.key)]))
    digest.update(encoded(None if gold is None else sorted((int(i), int(y)) for i, y in gold.items())))
    return digest.hexdigest()


def _status(status: str, owner: str | None) -> str:
    return INTERRUPTED if status == "running" and owner != PROCESS else status


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_creatable(path: str) -> None:
    """Refuse in words a new file that cannot be made: a file where a folder should be, a folder
    this user may not write in. (What it makes to find out, it removes.)"""
    folder = Path(path).absolute().parent
    while not os.path.lexists(folder):  # the nearest one that is there: the rest would be made
        folder = folder.parent
    if not folder.is_dir():
        raise StoreError(f"{path}: cannot create it: {folder} is a file, not a folder")
    try:  # tried, not asked: os.access says yes to root even where nothing can be made (/proc)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise StoreError(f"{path}: cannot create it: cannot write in {folder} ({error.strerror or error})") from None


def _insert_param_changes(con: duckdb.DuckDBPyConnection, changes: list, table: str = "param_changes") -> None:
    """Rows of `table` from (run_id, seq, iteration, ParamChange), numbered per event in the order given."""
    ords: dict[tuple, int] = {}
    rows = []
    for run_id, seq, iteration, change in changes:
        number = ords[run_id, seq] = ords.get((run_id, seq), -1) + 1
        rows.append((int(run_id), int(seq), number, int(iteration), change.parameter, _opt_float(change.old),
                     float(change.new)))
    con.execute(f"INSERT INTO {table} SELECT unnest(?), unnest(?), unnest(?), unnest(?), unnest(?::VARCHAR[]), "
                "unnest(?::DOUBLE[]), unnest(?::DOUBLE[])", [list(column) for column in zip(*rows)])


def _param_changes_from_notes(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """The one-time migration to schema 5: every set_param event's note, read into rows of `table`
    (old_notes.py; the only place a note is parsed). A note no release wrote gives no rows."""
    events = con.execute("SELECT run_id, seq, iteration, note FROM events WHERE kind = 'set_param' "
                         "ORDER BY run_id, seq").fetchall()
    changes = [(run_id, seq, iteration, change) for run_id, seq, iteration, note in events
               for change in param_changes_from_note(note, int(iteration)) or ()]
    if changes:
        _insert_param_changes(con, changes, table)


def _marked(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        return con.execute("SELECT list(marker) FROM icm_studio").fetchone()[0] == [MARKER]
    except (duckdb.CatalogException, duckdb.BinderException, duckdb.ConversionException):  # someone else's table
        return False


def _schema_of(con: duckdb.DuckDBPyConnection) -> tuple:
    """Every column (schema, table, name, type, nullability) in order, and every sequence, of the open file."""
    columns = con.execute(
        "SELECT table_schema, table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_catalog = current_database() ORDER BY table_schema, table_name, ordinal_position").fetchall()
    sequences = con.execute("SELECT schema_name, sequence_name FROM duckdb_sequences() "
                            "WHERE database_name = current_database() ORDER BY ALL").fetchall()
    return tuple(columns), tuple(sequences)


@functools.cache
def _schemas_before_marker() -> dict[tuple, int]:
    """The exact schemas of versions 3, 2 and 1, as DuckDB shows them: _TABLES made in memory,
    less what each later version added."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(_TABLES)
        columns, sequences = _schema_of(con)
    finally:
        con.close()
    known, dropped = {}, set()
    for version in (3, 2, 1):
        known[(tuple(c for c in columns if c[1:3] not in dropped), sequences)] = version
        dropped |= {(table, column) for table, column, _ in _ADDED_COLUMNS.get(version, ())}
    return known


class Store:
    """All persistence of ICM Studio. Thread-safe; one instance per database file per process."""

    def __init__(self, path: str = ":memory:", read_only: bool = False) -> None:
        """Open an ICM Studio database, or create one where nothing is. A file that is there is
        looked at read-only first and opened for writing only once it is known to be ours: any
        other file, DuckDB or not, is left byte for byte as it was."""
        self.path, self.read_only = str(path), read_only
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        if not self.path.strip():  # DuckDB would open an in-memory database and keep nothing
            raise StoreError("an empty --db path names no database file")
        try:
            if self.path == ":memory:":
                self._con = duckdb.connect(self.path)
                self._upgrade(None)
            elif read_only or os.path.lexists(self.path):
                self._open_existing()
            else:
                self._create()
        except BaseException:
            self.close()
            raise

    def _open_existing(self) -> None:
        file = Path(self.path)
        if not file.exists():
            raise StoreError(f"{self.path}: no such database")
        if not file.is_file():
            raise StoreError(f"{self.path} is {'a folder' if file.is_dir() else 'not a regular file'}, not a database file")
        try:
            with open(file, "rb") as handle:
                head = handle.read(12)
        except OSError as error:
            raise StoreError(f"{self.path}: cannot read it: {error.strerror or error}") from None
        if head[8:12] != b"DUCK":  # checked first: DuckDB would open a .csv as a database of one view
            raise ForeignDatabaseError(f"{self.path}: not a DuckDB database file (left untouched)")
        self._con = self._connect(read_only=True)
        found = self._recognised()
        if self.read_only:
            self._read_as_current(found)
            return
        self._con.close()
        self._con = self._connect(read_only=False)
        self._upgrade(self._recognised())  # looked at again: another process may have changed it in between

    def _create(self) -> None:
        """A new file. Whatever stops it half-made removes it again: a failed start leaves no file."""
        _check_creatable(self.path)
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"{self.path}: cannot create its folder: {error.strerror or error}") from None
        try:
            self._con = self._connect(read_only=False)
            self._upgrade(None)
        except BaseException:
            self.close()
            for made in (Path(self.path), Path(self.path + ".wal")):
                made.unlink(missing_ok=True)
            raise

    @classmethod
    def check(cls, path: str) -> None:
        """Refuse now what opening `path` for writing would refuse (a foreign, newer or locked file, a
        place no file can be made), creating and changing nothing: `icm run` asks before its model loads."""
        if path == ":memory:":
            return
        if os.path.lexists(path) or not str(path).strip():
            cls(path, read_only=True).close()
            if not os.access(path, os.W_OK):
                raise StoreError(f"{path}: no permission to write it")
        else:
            _check_creatable(path)

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as exc:
            raise self._open_error(exc) from exc

    def _open_error(self, exc: duckdb.Error) -> StoreError:
        said = str(exc)
        if "lock" in said.lower():
            return StoreLockedError(
                f"{self.path} is open in another process, and DuckDB allows one process per "
                f"database file. Stop the app (or whatever holds it), or do this through the "
                f"app's run manager instead of opening the file directly. DuckDB said: {said}"
            )
        if "not a valid DuckDB database" in said:
            return ForeignDatabaseError(f"{self.path}: not a DuckDB database file (left untouched)")
        if "ermission" in said or "read-only" in said:
            return StoreError(f"{self.path}: cannot open it{' read-only' if self.read_only else ''}: {said}")
        return StoreError(f"{self.path}: cannot read it as a DuckDB database (damaged or truncated?): "
                          f"{said.splitlines()[0] if said else type(exc).__name__}")

    @classmethod
    def existing(cls, path: str, read_only: bool = True) -> "Store":
        """Open a database that must already be there, read-only unless asked: what works on stored
        runs must not create an empty file from a mistyped path, and what only reads must not need
        write access or change a byte (a file from an older ICM Studio is read as it is)."""
        if str(path).strip() and not os.path.lexists(path):
            raise StoreError(f"{path}: no such database")
        return cls(path, read_only=read_only)

    def _recognised(self) -> int:
        """The schema version of this file if ICM Studio wrote it; ForeignDatabaseError for any other."""
        con = self._connection()
        try:
            tables = sorted({t for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()").fetchall()})
            if "icm_studio" in tables and _marked(con):
                found = con.execute("SELECT max(version) FROM schema_version").fetchone()[0]
            else:  # 1..3 had no marker: their exact schema (every table, column and sequence) says it
                found = _schemas_before_marker().get(_schema_of(con))
                if found is not None and con.execute("SELECT list(version) FROM schema_version").fetchone()[0] != [found]:
                    found = None
        except duckdb.Error as exc:
            raise self._open_error(exc) from exc
        if found is None:
            shown = ", ".join(tables[:8]) + (", ..." if len(tables) > 8 else "")
            raise ForeignDatabaseError(
                f"{self.path} is {'a' if tables else 'an empty'} DuckDB database that ICM Studio did not create"
                f"{f' (tables: {shown})' if tables else ''}; it was left untouched: pass a new file or an ICM Studio database")
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has schema version {found}, newer than this ICM Studio understands "
                f"({SCHEMA_VERSION}); upgrade ICM Studio to open it"
            )
        return int(found)

    def _upgrade(self, found: int | None) -> None:
        """Bring a new (None) or older file to SCHEMA_VERSION, marker included, in one transaction.
        Only writing opens get here."""
        if found == SCHEMA_VERSION:
            return
        with self._transaction() as con:
            for version, added in _ADDED_COLUMNS.items():
                if found is not None and found < version:  # older runs resume with counters rebuilt from
                    for table, column, kind in added:  # their events; older loads have no hash: never reused
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            con.execute(_SCHEMA)
            for version, added in _LATER_COLUMNS.items():
                if found is None or found < version:  # NULL in the rows already there: not recorded then
                    for table, column, kind in added:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if found is not None and found < _PARAM_CHANGES_SINCE:
                _param_changes_from_notes(con, "param_changes")
            con.execute("DELETE FROM icm_studio")
            con.execute("INSERT INTO icm_studio VALUES (?)", [MARKER])
            con.execute("DELETE FROM schema_version")
            con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])

    def _read_as_current(self, found: int) -> None:
        """Read an older file as the current schema without writing a byte to it: views in this
        connection's temporary memory show the columns it lacks as NULL, as the upgrade would."""
        con = self._connection()
        catalog = con.execute("SELECT current_database()").fetchone()[0].replace('"', '""')
        missing: dict[str, list[str]] = {}
        for version, added in [*_ADDED_COLUMNS.items(), *_LATER_COLUMNS.items()]:  # in the order the upgrade adds them
            for table, column, kind in added if found < version else ():
                missing.setdefault(table, []).append(f"NULL::{kind} AS {column}")
        for table, columns in missing.items():  # the temporary schema comes first when a name is looked up
            con.execute(f'CREATE TEMP VIEW {table} AS SELECT *, {", ".join(columns)} FROM "{catalog}".main.{table}')
        if found < _PARAM_CHANGES_SINCE:
            with self._reading() as con:  # reads the events: a damaged file says so in words
                con.execute(f"CREATE TEMP TABLE param_changes {_PARAM_CHANGES_COLUMNS}")
                _param_changes_from_notes(con, "temp.param_changes")

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing: every statement goes through these, under the lock -------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise StoreError(f"store {self.path} is closed")
        return self._con

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All-or-nothing writes: a crash or an exception mid-way leaves nothing behind."""
        with self._lock:
            con = self._connection()
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed COMMIT has already rolled back
                raise

    @contextmanager
    def _reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, under the lock; a file that turns out damaged or truncated (found only
        when a query reaches the missing block) is a StoreError that says so, not a traceback."""
        with self._lock:
            try:
                yield self._connection()
            except duckdb.Error as exc:  # a failed checksum is a plain duckdb.Error
                if isinstance(exc, (duckdb.IOException, duckdb.SerializationException)) or "Corrupt" in str(exc):
                    raise self._open_error(exc) from exc
                raise

    def _rows(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        with self._reading() as con:
            return con.execute(sql, params).fetchall()

    def _df(self, sql: str, params: list | tuple = ()) -> pd.DataFrame:
        with self._reading() as con:
            return con.execute(sql, params).df()

    def _one(self, sql: str, params: list | tuple, what: str) -> tuple:
        rows = self._rows(sql, params)
        if not rows:
            raise NotFoundError(f"no {what} in {self.path}")
        return rows[0]

    def _no_run(self, run_id: int) -> NotFoundError:
        """What a mistyped run id reads as: the file, and the runs it does have."""
        ids = [r for (r,) in self._rows("SELECT run_id FROM runs ORDER BY run_id")]
        shown = ", ".join(map(str, ids[:8])) + (f", ... {ids[-1]}" if len(ids) > 8 else "")
        return NotFoundError(f"no run {run_id} in {self.path} ({f'its runs: {shown}' if ids else 'it has no runs yet'})")

    # -- datasets -------------------------------------------------------------------

    def add_dataset(self, name: str, task: dict, examples: list[Example], gold: dict[int, int] | None,
                    source: str = "", progress: Callable[[float], None] | None = None, reuse: bool = False) -> int:
        """Store a dataset in one transaction; gold is keyed by example idx (load order).
        reuse=True returns a stored dataset with exactly this content instead of adding a twin.

        progress(fraction) is called on this thread while the store is locked: keep it quick.
        """
        task_dict = task.to_dict() if hasattr(task, "to_dict") else dict(task)
        parsed = Task.from_dict(task_dict)  # refuse a broken task now, not at run time
        n = len(examples)
        if n == 0:
            raise ValueError(f"dataset {name!r} has no examples")
        gold_items = sorted((int(i), int(y)) for i, y in (gold or {}).items())
        bad = [(i, y) for i, y in gold_items if not 0 <= i < n or y not in (0, 1)]
        if bad:
            raise ValueError(f"gold must map idx in 0..{n - 1} to 0/1; bad entries: {bad[:5]}")
        digest = content_hash(task_dict, examples, gold)
        if reuse and (same := self._dataset_with_hash(digest)) is not None:
            return same
        with self._transaction() as con:
            dataset_id = con.execute("SELECT nextval('dataset_ids')").fetchone()[0]
            con.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [dataset_id, name, to_json(task_dict), source, n, gold is not None, _now(), digest],
            )
            for start in range(0, n, _CHUNK):
                cols: tuple[list, ...] = ([], [], [], [], [])
                for idx in range(start, min(start + _CHUNK, n)):
                    ex = examples[idx]
                    missing = [f for f in parsed.fields if f not in ex.fields]
                    if missing:
                        raise ValueError(f"example {idx} ({ex.uid!r}) lacks task fields {missing}")
                    try:
                        fields_json = to_json(dict(ex.fields))
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"example {idx} ({ex.uid!r}): fields are not storable: {exc}") from exc
                    group = None if ex.group is None else str(ex.group)  # loaders may hand ints
                    key = None if ex.key is None else str(ex.key)
                    for col, value in zip(cols, (idx, str(ex.uid), fields_json, group, key)):
                        col.append(value)
                # unnest of list parameters: one statement per chunk (executemany is ~70x slower)
                con.execute(
                    "INSERT INTO examples SELECT ?, unnest(?), unnest(?), unnest(?), "
                    "unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                    [dataset_id, *cols],
                )
                if progress is not None:
                    progress(min(start + _CHUNK, n) / n)
            if gold_items:
                con.execute(
                    "INSERT INTO gold SELECT ?, unnest(?), unnest(?)",
                    [dataset_id, [i for i, _ in gold_items], [y for _, y in gold_items]],
                )
        return int(dataset_id)

    def _dataset_with_hash(self, digest: str) -> int | None:
        rows = self._rows("SELECT max(dataset_id) FROM datasets WHERE content_hash = ?", [digest])
        return None if rows[0][0] is None else int(rows[0][0])

    def datasets(self) -> pd.DataFrame:
        return self._df(
            "SELECT d.*, (SELECT count(*) FROM runs r WHERE r.dataset_id = d.dataset_id) AS n_runs "
            "FROM datasets d ORDER BY d.dataset_id"
        )

    def dataset_task(self, dataset_id: int) -> dict:
        sql = "SELECT task_json FROM datasets WHERE dataset_id = ?"
        return json.loads(self._one(sql, [dataset_id], f"dataset {dataset_id}")[0])

    def load_examples(self, dataset_id: int) -> list[Example]:
        """The examples in idx order, without gold."""
        self.dataset_task(dataset_id)  # KeyError for an unknown dataset rather than []
        rows = self._rows(
            "SELECT uid, fields_json, group_key, cons_key FROM examples WHERE dataset_id = ? ORDER BY idx",
            [dataset_id],
        )
        return [Example(uid=u, fields=json.loads(f), group=g, key=k) for u, f, g, k in rows]

    def load_gold(self, dataset_id: int) -> dict[int, int] | None:
        """Gold labels by idx, for evaluation and audit only; None if the dataset has none."""
        sql = "SELECT has_gold FROM datasets WHERE dataset_id = ?"
        if not self._one(sql, [dataset_id], f"dataset {dataset_id}")[0]:
            return None
        rows = self._rows("SELECT idx, label FROM gold WHERE dataset_id = ? ORDER BY idx", [dataset_id])
        return {int(i): int(y) for i, y in rows}

    def delete_dataset(self, dataset_id: int) -> None:
        """Refuses while runs use the dataset: their history would lose its examples."""
        with self._transaction() as con:
            sql = "SELECT run_id FROM runs WHERE dataset_id = ? ORDER BY run_id"
            runs = [r for (r,) in con.execute(sql, [dataset_id]).fetchall()]
            if runs:
                raise ValueError(f"dataset {dataset_id} is used by runs {runs}; delete those runs first")
            for table in ("gold", "examples", "datasets"):
                con.execute(f"DELETE FROM {table} WHERE dataset_id = ?", [dataset_id])

    # -- runs -----------------------------------------------------------------------

    def create_run(self, dataset_id: int, config: dict, model_info: dict, name: str = "",
                   parent_run_id: int | None = None) -> int:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        model_info = dataclasses.asdict(model_info) if dataclasses.is_dataclass(model_info) else dict(model_info)
        seed = (config.get("search") or {}).get("seed", config.get("seed"))
        with self._transaction() as con:
            if not con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchall():
                raise NotFoundError(f"no dataset {dataset_id} in {self.path}")
            if parent_run_id is not None and not con.execute(
                    "SELECT 1 FROM runs WHERE run_id = ?", [parent_run_id]).fetchall():
                raise NotFoundError(f"no parent run {parent_run_id} in {self.path}")
            run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
            now = _now()
            con.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, 'created', ?, ?, NULL, -1, NULL, ?, NULL)",
                [run_id, dataset_id, name or f"run {run_id}", to_json(config), to_json(model_info),
                 _opt_int(seed), now, now, parent_run_id],
            )
        return int(run_id)

    def set_run_config(self, run_id: int, config: dict) -> None:
        """Replace a run's stored config (a step cap raised by extending the run)."""
        with self._transaction() as con:
            con.execute("UPDATE runs SET config_json = ?, updated_at = ? WHERE run_id = ?", [to_json(config), _now(), run_id])

    def set_run_model(self, run_id: int, model_info: dict) -> None:
        """Replace the requested model settings with what loading resolved (device, dtype, revision)."""
        model_info = dataclasses.asdict(model_info) if dataclasses.is_dataclass(model_info) else dict(model_info)
        with self._transaction() as con:
            con.execute("UPDATE runs SET model_json = ?, updated_at = ? WHERE run_id = ?",
                        [to_json(model_info), _now(), run_id])

    def record_step(self, run_id: int, record: StepRecord, snapshot: SearchSnapshot) -> None:
        """Persist one step atomically: its event, its flips, the labeled set and the state to resume from."""
        if record.kind not in EVENT_KINDS or any(f.cause not in FLIP_CAUSES for f in record.flips):
            raise ValueError(f"event kinds are {EVENT_KINDS} and flip causes {FLIP_CAUSES}; got {record.kind!r}, "
                             f"{sorted({f.cause for f in record.flips})}")
        if record.params and (record.kind != "set_param" or any(c.parameter not in PARAMETERS for c in record.params)):
            raise ValueError(f"only a set_param event changes parameters, and they are {PARAMETERS}; got a "
                             f"{record.kind!r} event changing {[c.parameter for c in record.params]}")
        items = sorted(snapshot.labels.items())
        if any(state.label not in (0, 1) for _, state in items):
            raise ValueError("labels must be 0 or 1")
        with self._transaction() as con:
            sql = "SELECT last_seq, n_examples FROM runs JOIN datasets USING (dataset_id) WHERE run_id = ?"
            found = con.execute(sql, [run_id]).fetchall()
            if not found:
                raise self._no_run(run_id)
            last_seq, n = found[0]
            touched = [e for e, _ in items] + [f.example for f in record.flips] + sorted(snapshot.excluded)
            touched += [] if record.example is None else [record.example]
            if any(not 0 <= int(e) < n for e in touched):
                raise ValueError(f"run {run_id}: example index outside 0..{n - 1}")
            seq, now = last_seq + 1, _now()
            r = record
            con.execute(
                f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})",
                [run_id, r.iteration, seq, r.kind, _opt_float(r.temperature), _opt_int(r.example),
                 _opt_int(r.old_label), _opt_int(r.proposed_label),
                 None if r.proposal_logp is None else to_json(list(r.proposal_logp)),
                 to_json([dataclasses.asdict(f) for f in r.fixes]),
                 _opt_float(r.u_before), _opt_float(r.u_after), _opt_float(r.ap_before), _opt_float(r.ap_after),
                 _opt_int(r.i_before), _opt_int(r.i_after), _opt_float(r.delta), _opt_float(r.accept_prob),
                 _opt_float(r.draw), bool(r.accepted), int(r.labeled_count), int(r.model_calls),
                 int(r.tokens_forwarded), float(r.seconds), r.note, now, int(r.tokens_reused)],
            )
            if r.flips:
                con.execute(
                    "INSERT INTO flips SELECT ?, ?, ?, unnest(?), unnest(?), unnest(?::TINYINT[]), "
                    "unnest(?::TINYINT[]), unnest(?), unnest(?::INTEGER[])",
                    [run_id, r.iteration, seq, list(range(len(r.flips))), [int(f.example) for f in r.flips],
                     [_opt_int(f.old) for f in r.flips], [_opt_int(f.new) for f in r.flips],
                     [f.cause for f in r.flips], [_opt_int(f.partner) for f in r.flips]],
                )
            if r.params:
                _insert_param_changes(con, [(run_id, seq, r.iteration, change) for change in r.params])
            # The whole labeled set is replaced: every logp can change whenever D changes.
            con.execute("DELETE FROM labels WHERE run_id = ?", [run_id])
            if items:
                con.execute(
                    "INSERT INTO labels SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?::DOUBLE[]), "
                    "unnest(?::DOUBLE[]), unnest(?)",
                    [run_id, [int(e) for e, _ in items], [int(s.label) for _, s in items],
                     [int(s.position) for _, s in items],
                     [None if s.logp is None else float(s.logp[0]) for _, s in items],
                     [None if s.logp is None else float(s.logp[1]) for _, s in items],
                     [bool(s.pinned) for _, s in items]],
                )
            s = snapshot
            con.execute(
                "INSERT OR REPLACE INTO run_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, s.iteration, to_json(tag_state(s.rng_state)), to_json(sorted(int(e) for e in s.excluded)),
                 int(s.next_position), float(s.alpha), float(s.t0), _opt_float(s.u), _opt_float(s.ap),
                 _opt_int(s.inconsistencies), to_json(dataclasses.asdict(s.progress))],
            )
            # A steering event on a paused or finished run must not flip it back to running.
            con.execute(
                "UPDATE runs SET last_seq = ?, last_iteration = ?, updated_at = ?, "
                "owner = CASE WHEN status = 'created' THEN ? ELSE owner END, "
                "status = CASE WHEN status = 'created' THEN 'running' ELSE status END WHERE run_id = ?",
                [seq, s.iteration, now, PROCESS, run_id],
            )

    def load_snapshot(self, run_id: int) -> SearchSnapshot | None:
        """The state the last recorded step left; None if the run has no step yet."""
        with self._lock:
            if not self._rows("SELECT 1 FROM runs WHERE run_id = ?", [run_id]):
                raise self._no_run(run_id)
            state = self._rows("SELECT * EXCLUDE (run_id) FROM run_state WHERE run_id = ?", [run_id])
            if not state:
                return None
            rows = self._rows(
                "SELECT example, label, position, logp_false, logp_true, pinned FROM labels "
                "WHERE run_id = ? ORDER BY position, example",
                [run_id],
            )
        iteration, rng_json, excluded_json, next_position, alpha, t0, u, ap, inconsistencies, progress_json = state[0]
        progress = SearchProgress(**json.loads(progress_json)) if progress_json else self._rebuilt_progress(run_id)
        labels = {int(e): LabelState(int(y), int(p), None if lf is None and lt is None else (lf, lt), bool(pin))
                  for e, y, p, lf, lt, pin in rows}
        return SearchSnapshot(
            iteration=iteration, labels=labels, excluded=set(json.loads(excluded_json)),
            rng_state=json.loads(rng_json, object_hook=untag_state), next_position=next_position,
            alpha=alpha, t0=t0, u=u, ap=ap, inconsistencies=inconsistencies, progress=progress,
        )

    def _rebuilt_progress(self, run_id: int) -> SearchProgress:
        """Counters for a run written before they were stored (schema 1), from its flips."""
        (accepted, last), = self._rows(
            "SELECT count(DISTINCT seq) FILTER (WHERE cause = 'proposal'), coalesce(max(iteration), 0) "
            "FROM flips WHERE run_id = ?", [run_id])
        return SearchProgress(accepted_changes=int(accepted), last_change=int(last))

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Set the status; error is replaced too, so a resumed run drops its old failure.
        'running' records this process as the run's owner: read from another process, a run
        whose owner is gone reads as 'interrupted'."""
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
        with self._transaction() as con:
            if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
                raise self._no_run(run_id)
            con.execute("UPDATE runs SET status = ?, error = ?, updated_at = ?, owner = ? WHERE run_id = ?",
                        [status, error, _now(), PROCESS if status == "running" else None, run_id])

    def run(self, run_id: int) -> dict:
        """The run's row, with config and model parsed into dicts (config_json/model_json dropped)."""
        with self._reading() as con:
            cursor = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
            names, rows = [d[0] for d in cursor.description], cursor.fetchall()
        if not rows:
            raise self._no_run(run_id)
        row = dict(zip(names, rows[0]))
        row["status"] = _status(row["status"], row["owner"])
        row["config"] = json.loads(row.pop("config_json"))
        row["model"] = json.loads(row.pop("model_json"))
        return row

    def runs(self, dataset_id: int | None = None) -> pd.DataFrame:
        """Every run with its dataset's name and size and how many examples it has labeled and
        excluded (coverage at a glance)."""
        where, params = ("WHERE r.dataset_id = ?", [dataset_id]) if dataset_id is not None else ("", [])
        sql = ("SELECT r.*, d.name AS dataset_name, d.n_examples, coalesce(l.labeled, 0) AS labeled, "
               "coalesce(json_array_length(s.excluded_json), 0) AS excluded "
               "FROM runs r LEFT JOIN datasets d USING (dataset_id) "
               "LEFT JOIN (SELECT run_id, count(*) AS labeled FROM labels GROUP BY run_id) l USING (run_id) "
               "LEFT JOIN run_state s USING (run_id)")
        frame = self._df(f"{sql} {where} ORDER BY r.run_id", params)
        frame["status"] = [_status(s, o) for s, o in zip(frame["status"], frame["owner"])]
        return frame

    def child_runs(self, run_id: int) -> list[int]:
        """The runs created under `run_id` (parent_run_id): a batched run's batch runs, in order."""
        with self._lock:
            if not self._rows("SELECT 1 FROM runs WHERE run_id = ?", [run_id]):
                raise self._no_run(run_id)
            return [int(r) for (r,) in self._rows("SELECT run_id FROM runs WHERE parent_run_id = ? ORDER BY run_id",
                                                 [run_id])]

    def replace_labels(self, run_id: int, labels: pd.DataFrame) -> None:
        """Set a run's labeled set without a step: a batched run's labels, the union of its batch
        runs' (runs/batches.py). `labels` has the columns example, label, position, logp_false,
        logp_true and pinned (as Store.labels gives them). Such a run has no events, so last_seq
        counts these writes instead: readers keyed by it (the studio's caches) see each one."""
        rows = labels.sort_values("example")
        examples = [int(e) for e in rows["example"]]
        if not rows["label"].isin((0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        if len(set(examples)) != len(examples):
            raise ValueError(f"run {run_id}: an example labeled twice")
        with self._transaction() as con:
            sql = "SELECT n_examples FROM runs JOIN datasets USING (dataset_id) WHERE run_id = ?"
            found = con.execute(sql, [run_id]).fetchall()
            if not found:
                raise self._no_run(run_id)
            if any(not 0 <= e < found[0][0] for e in examples):
                raise ValueError(f"run {run_id}: example index outside 0..{found[0][0] - 1}")
            con.execute("DELETE FROM labels WHERE run_id = ?", [run_id])
            if examples:
                con.execute(
                    "INSERT INTO labels SELECT ?, unnest(?), unnest(?), unnest(?), unnest(?::DOUBLE[]), "
                    "unnest(?::DOUBLE[]), unnest(?)",
                    [run_id, examples, [int(y) for y in rows["label"]], [int(p) for p in rows["position"]],
                     *([None if pd.isna(v) else float(v) for v in rows[c]] for c in ("logp_false", "logp_true")),
                     [bool(p) for p in rows["pinned"]]])
            con.execute("UPDATE runs SET last_seq = last_seq + 1, updated_at = ? WHERE run_id = ?", [_now(), run_id])

    def delete_run(self, run_id: int) -> None:
        """Remove a run and its whole history; runs forked from it keep parent_run_id as a record."""
        with self._transaction() as con:
            for table in ("param_changes", "flips", "events", "labels", "run_state", "runs"):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])

    def events(self, run_id: int, since_seq: int = -1) -> pd.DataFrame:
        """Events with seq > since_seq, in order: a live view polls with the last seq it has."""
        return self._df("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", [run_id, since_seq])

    def param_changes(self, run_id: int) -> pd.DataFrame:
        """What the run's set_param events changed, in order: seq (the event), ord, iteration,
        parameter (records.PARAMETERS), old_value (NULL where not recorded) and new_value."""
        return self._df("SELECT * FROM param_changes WHERE run_id = ? ORDER BY seq, ord", [run_id])

    def flips(self, run_id: int, example: int | None = None) -> pd.DataFrame:
        where, params = ("AND example = ?", [run_id, example]) if example is not None else ("", [run_id])
        return self._df(f"SELECT * FROM flips WHERE run_id = ? {where} ORDER BY seq, ord", params)

    def labels(self, run_id: int) -> pd.DataFrame:
        """The current labeled set in demonstration order; n_flips counts all its flip rows, "initial" included."""
        return self._df(
            """SELECT l.example, e.uid, l.label, l.position, l.logp_false, l.logp_true, l.pinned,
                      coalesce(f.n_flips, 0) AS n_flips, e.group_key, e.cons_key, e.fields_json
               FROM labels l JOIN runs r ON r.run_id = l.run_id
               LEFT JOIN examples e ON e.dataset_id = r.dataset_id AND e.idx = l.example
               LEFT JOIN (SELECT example, count(*) AS n_flips FROM flips WHERE run_id = ? GROUP BY example) f
                      ON f.example = l.example
               WHERE l.run_id = ? ORDER BY l.position, l.example""",
            [run_id, run_id],
        )

    def label_history(self, run_id: int, example: int) -> pd.DataFrame:
        """Every flip of one example, with the step that caused it."""
        return self._df(
            """SELECT f.seq, f.ord, f.iteration, f.example, f.old_label, f.new_label, f.cause, f.partner, e.kind,
                      e.temperature, e.delta, e.accept_prob, e.draw, e.accepted, e.fixes_json, e.note, e.created_at,
                      e.example AS step_example, e.proposal_logp_json, e.u_before, e.u_after
               FROM flips f JOIN events e ON e.run_id = f.run_id AND e.seq = f.seq
               WHERE f.run_id = ? AND f.example = ? ORDER BY f.seq, f.ord""",
            [run_id, example],
        )

    # -- evaluations ----------------------------------------------------------------

    def save_eval(self, name: str, config: dict, results: pd.DataFrame, eval_id: int | None = None) -> int:
        """One evaluation: known columns (EVAL_COLUMNS) as columns, every other column in extra_json.
        With eval_id, that evaluation's config and rows are replaced (an evaluation saved per seed)."""
        extras = [c for c in results.columns if c not in EVAL_COLUMNS]
        records = results.to_dict("records")
        known = {c: [json_value(rec.get(c)) for rec in records] for c in EVAL_COLUMNS}
        extra_json = [to_json({c: json_value(rec[c]) for c in extras}) for rec in records]
        with self._transaction() as con:
            if eval_id is None:
                eval_id = con.execute("SELECT nextval('eval_ids')").fetchone()[0]
                con.execute("INSERT INTO eval_runs VALUES (?, ?, ?, ?)", [eval_id, name, to_json(config), _now()])
            else:
                con.execute("UPDATE eval_runs SET name = ?, config_json = ? WHERE eval_id = ?", [name, to_json(config), eval_id])
                con.execute("DELETE FROM eval_rows WHERE eval_id = ?", [eval_id])
            if records:
                con.execute(
                    "INSERT INTO eval_rows SELECT ?, unnest(?), unnest(?::VARCHAR[]), unnest(?::BIGINT[]), "
                    "unnest(?::DOUBLE[]), unnest(?::INTEGER[]), unnest(?::INTEGER[]), unnest(?)",
                    [eval_id, list(range(len(records))), *(known[c] for c in EVAL_COLUMNS), extra_json],
                )
        return int(eval_id)

    def evals(self) -> pd.DataFrame:
        return self._df(
            "SELECT v.*, (SELECT count(*) FROM eval_rows w WHERE w.eval_id = v.eval_id) AS n_rows "
            "FROM eval_runs v ORDER BY v.eval_id"
        )

    def eval_rows(self, eval_id: int) -> pd.DataFrame:
        """The rows as saved: known columns, then extra_json expanded back into columns."""
        df = self._df("SELECT * EXCLUDE (eval_id) FROM eval_rows WHERE eval_id = ? ORDER BY row_no", [eval_id])
        extra = pd.DataFrame([json.loads(x) for x in df.pop("extra_json")], index=df.index)
        return pd.concat([df.drop(columns="row_no"), extra], axis=1)
