"""Fuzzing the two things a user hands `icm`: a table (--data) and a database (--db).

Generated tables of random shapes, column names, cell types, encodings and sizes, in every format,
whole or cut short, go through the loaders and `icm run --steps 0`; generated --db files (random
bytes, foreign DuckDB schemas, truncated and bit-flipped copies of a real run's file, files of
earlier ICM Studio versions) go through
runs, export and run. For every input the answer is either a clean load (the run gets as far as
loading its model, which here stops it) or exit status 2 with one line, and no file is created or
changed. No model is ever loaded: the refusal must come before it.

Each test prints how many inputs it tried, how they were answered and how long it took:
    OMP_NUM_THREADS=1 python -m pytest -q -s tests/test_fuzz_inputs.py
"""
from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icm_engine import cli
from icm_engine.backends.fake import FakeLM
from icm_engine.cli import run as run_command
from icm_engine.data.datasets import load_any
from icm_engine.store.database import MARKER
from tests.old_databases import old_database

pd = pytest.importorskip("pandas")

# Examples per run of each test (~7 s and ~15 s on one busy core); ICM_FUZZ_SCALE=10 hunts ten times longer.
SCALE = float(os.environ.get("ICM_FUZZ_SCALE", "1"))
TABLES, DATABASES = int(300 * SCALE), int(150 * SCALE)
FUZZ = settings(max_examples=TABLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
TASKS = ("sentiment_single", "sentiment", "truthfulqa", "gsm8k_verification", "hh_rlhf_harmless")
COLUMNS = ("text", "gold", "label", "id", "group", "key", "claim", "question", "choice", "solution", "prompt",
           "response_a", "response_b", "", " text", "Text", "gold ", "a,b", 'q"uote', "\u00e9t\u00e9", "1")  # names a user may give
FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt", "")
CELLS = st.one_of(
    st.text(max_size=12), st.sampled_from(["", " ", "NA", "null", "0", "1", "true", "2", "1.0", "A: 18", "\n", ",", '"',
                                           "\t", "\x00", "\ufeff", "\u00e9", "\U0001f600", "\ud800", "x" * 300]),
    st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from(["x", "y"]), st.integers(), max_size=2),
)


class ModelWouldLoad(Exception):
    """Raised where the model would load: everything before it accepted the input."""


def _no_model(model):
    raise ModelWouldLoad


def answer(argv: list[str], capsys) -> tuple[object, list[str]]:
    """(exit status, or "model" where the model would load; the lines on stderr). Anything else raises."""
    capsys.readouterr()
    try:
        status = cli.main(argv)
    except ModelWouldLoad:
        status = "model"
    return status, capsys.readouterr().err.strip().splitlines()


# Per task: the columns of a good table, and whether its rows come in pairs sharing a group.
GOOD = {"sentiment_single": (("text", "gold"), False), "sentiment": (("text", "gold"), False),
        "truthfulqa": (("question", "choice", "gold"), False), "gsm8k_verification": (("question", "solution", "gold"), True),
        "hh_rlhf_harmless": (("prompt", "response_a", "response_b", "group", "key", "gold"), True)}
WORDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=16).filter(str.strip)


def good_cell(draw, column: str, row: int):
    if column == "gold":
        return draw(st.sampled_from([0, 1, "0", "1", "true", "False", 1.0]))
    if column == "group":
        return f"g{row // 2}"
    if column == "key":
        return ("ab", "ba")[row % 2]
    if column == "question":
        return f"question {row // 2}"
    if column == "solution":
        return f"{draw(WORDS)}\nA: {draw(st.integers(0, 3))}"
    return draw(WORDS)


@st.composite
def tables(draw) -> tuple[str, str, bytes]:
    """A task, a file name and its bytes: a good table for the task, then perhaps a few mutations
    (a cell, a column's name, a column gone or added, a row repeated), in a random format and
    encoding, perhaps cut short or replaced by noise."""
    task = draw(st.sampled_from(TASKS))
    columns, paired = GOOD[task]
    columns = list(columns)
    n = draw(st.integers(0, 3)) * 2 if paired else draw(st.integers(0, 6))
    rows = [[good_cell(draw, c, r) for c in columns] for r in range(n)]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        mutation = draw(st.sampled_from(["cell", "cell", "rename", "drop", "add", "repeat"]))
        if mutation == "cell" and rows:
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, len(columns) - 1))] = draw(CELLS)
        elif mutation == "rename":
            columns[draw(st.integers(0, len(columns) - 1))] = draw(st.sampled_from(COLUMNS))
        elif mutation == "drop" and len(columns) > 1:
            at = draw(st.integers(0, len(columns) - 1))
            del columns[at]
            rows = [row[:at] + row[at + 1:] for row in rows]
        elif mutation == "add":
            columns.append(draw(st.sampled_from(COLUMNS)))
            rows = [row + [draw(CELLS)] for row in rows]
        elif mutation == "repeat" and rows:
            rows.append(list(draw(st.sampled_from(rows))))
    suffix = draw(st.sampled_from(FORMATS))
    as_text = lambda cell: "" if cell is None else str(cell)  # noqa: E731
    if suffix in (".csv", ".tsv", ".txt", ""):
        import csv

        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if suffix == ".tsv" else ",")
        if draw(st.integers(0, 9)):  # now and then no header
            writer.writerow(columns)
        writer.writerows([[as_text(c) for c in row] for row in rows])
        text = buffer.getvalue()
    elif suffix == ".jsonl":
        text = "".join(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
    elif suffix == ".json":
        shape = draw(st.sampled_from(["records", "records", "columns", "scalar"]))
        value = [dict(zip(columns, row)) for row in rows] if shape == "records" else \
            {c: [r[i] for r in rows] for i, c in enumerate(columns)} if shape == "columns" else draw(CELLS)
        text = json.dumps(value, allow_nan=True)
    else:  # parquet: pandas writes what it can; what it cannot becomes a file of random bytes
        try:
            frame = pd.DataFrame(rows, columns=[f"{c}{i}" if columns.count(c) > 1 else c for i, c in enumerate(columns)])
            buffer = io.BytesIO()
            frame.to_parquet(buffer)
            data = buffer.getvalue()
        except Exception:  # mixed types or lone surrogates pyarrow will not write
            data = draw(st.binary(max_size=64))
        return task, f"t{suffix}", _maybe_cut(draw, data)
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    data = text.encode(encoding, errors="replace") if encoding != "utf-8" else text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # now and then a big one: many copies of its rows
        data = data + data.split(b"\n", 1)[-1] * 2000
    return task, f"t{suffix}", _maybe_cut(draw, data)


def _maybe_cut(draw, data: bytes) -> bytes:
    if data and draw(st.integers(0, 9)) == 0:
        return data[:draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=200))
    return data


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_command, "load_backend", _no_model)
    return tmp_path


def test_random_tables_load_cleanly_or_get_one_line_and_leave_no_file(folder, capsys):
    tried, started = Counter(), time.perf_counter()

    @FUZZ
    @given(tables(), st.sampled_from([None, None, 1, 3]))
    def one(table, limit):
        task, name, data = table
        path = folder / name
        path.write_bytes(data)
        try:
            loaded = load_any(name, task=task, limit=limit)
        except (ValueError, KeyError, OSError):  # what the CLI turns into one line
            loaded = None
        if loaded is not None:
            assert len(loaded.examples) >= 1
        argv = ["run", "--data", name, "--task", task, "--steps", "0", "--db", "fuzz.duckdb"]
        status, err = answer(argv + ([] if limit is None else ["--limit", str(limit)]), capsys)
        if loaded is not None:
            assert status == "model", err
        else:
            assert status == 2 and len(err) == 1 and err[0].startswith(f"icm: {name}: "), (data[:200], err)
        assert not (folder / "fuzz.duckdb").exists()
        assert path.read_bytes() == data
        tried["loaded" if loaded is not None else "refused in one line"] += 1

    one()
    report(capsys, "tables through load_any and `icm run --steps 0`", tried, started)
    assert sum(tried.values()) >= TABLES // 2 and tried["loaded"]  # some of them good tables, too


def report(capsys, what: str, tried: Counter, started: float) -> None:
    """One line on the terminal, whatever pytest captures: the count a run of this file is judged by."""
    with capsys.disabled():
        outcomes = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tried.items()))
        print(f"\nfuzz: {sum(tried.values())} {what} in {time.perf_counter() - started:.1f} s ({outcomes})")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> bytes:
    """The bytes of a database holding one finished run (the fake model, 4 sentences, 3 steps)."""
    folder = tmp_path_factory.mktemp("real_run")
    (folder / "ok.csv").write_text("text,gold\nGood food,1\nBad food,0\nGreat place,1\nAwful,0\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(run_command, "load_backend", lambda model: FakeLM(strength=6))
        assert cli.main(["run", "--data", "ok.csv", "--task", "sentiment_single", "--steps", "3", "--db", "icm.duckdb"]) == 0
    return (folder / "icm.duckdb").read_bytes()


OUR_TABLES = ("schema_version", "icm_studio", "datasets", "examples", "gold", "runs", "run_state", "events", "flips",
              "labels", "eval_runs", "eval_rows", "mine")
SQL_TYPES = ("INTEGER", "VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "TIMESTAMP")


@st.composite
def databases(draw, size: int) -> tuple:
    """A recipe for a --db file, small to show when a case fails: made into a file by `build`."""
    kind = draw(st.sampled_from(["bytes", "magic", "schema", "cut", "flip", "old"]))
    if kind == "old":  # a file of ICM Studio 1..5, which must still open (tests/old_databases.py)
        return kind, draw(st.integers(1, 5))
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "magic":  # random bytes that DuckDB's header check would take for one of its own
        return kind, draw(st.binary(min_size=8, max_size=8)) + b"DUCK" + draw(st.binary(max_size=5000))
    if kind == "cut":
        return kind, draw(st.integers(0, size - 1))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=4))
    statements = []
    for table in draw(st.lists(st.sampled_from(OUR_TABLES), max_size=4, unique=True)):
        names = draw(st.lists(st.sampled_from(["version", "marker", "run_id", "name", "a"]), min_size=1, max_size=3,
                              unique=True))
        kinds = [draw(st.sampled_from(SQL_TYPES)) for _ in names]
        statements.append(f"CREATE TABLE {table} ({', '.join(f'{n} {k}' for n, k in zip(names, kinds))})")
        if draw(st.booleans()):  # a row whose first cell is a version-like value, or NULL where it will not cast
            value = draw(st.sampled_from(["1", "3", "4", "99", "x", MARKER]))
            statements.append(f"INSERT INTO {table} ({names[0]}) SELECT TRY_CAST('{value}' AS {kinds[0]})")
    return kind, ";".join(statements) or "SELECT 1"


def build(recipe: tuple, path: Path, real: bytes) -> None:
    kind, detail = recipe
    if kind == "schema":
        con = duckdb.connect(str(path))
        try:
            con.execute(detail)
        finally:
            con.close()
    elif kind == "old":
        old_database(path, detail)
    elif kind == "cut":
        path.write_bytes(real[:detail])
    elif kind == "flip":
        flipped = bytearray(real)
        for at, bits in detail:
            flipped[at] ^= bits
        path.write_bytes(bytes(flipped))
    else:
        path.write_bytes(detail)


def test_random_database_files_get_one_line_and_stay_byte_identical(folder, capsys, real_run):
    (folder / "ok.csv").write_text("text,gold\nGood,1\nBad,0\n")
    tried, started = Counter(), time.perf_counter()
    commands = (["runs"], ["export", "--run", "1", "--out", "out.csv"],
                ["run", "--data", "ok.csv", "--task", "sentiment_single", "--steps", "0"])

    @settings(FUZZ, max_examples=DATABASES)
    @given(databases(len(real_run)), st.sampled_from(commands))
    def one(recipe, command):
        path = folder / "fuzz.duckdb"
        path.unlink(missing_ok=True)
        build(recipe, path, real_run)
        before = path.read_bytes()
        status, err = answer([*command, "--db", str(path)], capsys)
        assert path.read_bytes() == before
        (folder / "out.csv").unlink(missing_ok=True)
        if status in (0, "model"):  # a cut or flipped copy still readable as ours answers as the real one
            assert recipe[0] in ("cut", "flip", "old"), err  # random bytes or a schema made here are never ours
        else:
            assert recipe[0] != "old", err  # an earlier version's file opens for every command
            assert status == 2 and len(err) == 1 and err[0].startswith(f"icm {command[0]}: {path}"), (command, err)
        tried[f"{recipe[0]}: {'answered' if status in (0, 'model') else 'refused'}"] += 1

    one()
    report(capsys, "database files through runs, export and run", tried, started)
    assert sum(tried.values()) >= DATABASES // 2


def test_the_real_file_itself_answers(folder, capsys, real_run):
    """The control for the test above: the uncut file lists its run, exports it, and a new run on it
    gets as far as its model; none of them changes a byte."""
    path = folder / "icm.duckdb"
    path.write_bytes(real_run)
    (folder / "ok.csv").write_text("text,gold\nGood,1\nBad,0\n")
    assert answer(["runs", "--db", str(path)], capsys)[0] == 0
    assert answer(["export", "--run", "1", "--out", "out.csv", "--db", str(path)], capsys)[0] == 0
    assert answer(["run", "--data", "ok.csv", "--task", "sentiment_single", "--db", str(path)], capsys)[0] == "model"
    assert path.read_bytes() == real_run
