"""Bad input, round two: what a new user tried through run, runs, export, report and trust that
tests/test_bad_inputs.py did not hold. Each case gets exactly one line, exit status 2, and no
file is created or changed; the model is never loaded for a case refused here.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest

from icm_engine import cli
from icm_engine.backends.fake import FakeLM
from icm_engine.cli import report as report_command
from icm_engine.cli import run as run_command
from icm_engine.cli import trust as trust_command

OK_CSV = "text,gold\nGood food,1\nBad food,0\nGreat place,1\nAwful,0\n"
FOREIGN = "DuckDB database that ICM Studio did not create"
UNTOUCHED = "it was left untouched: pass a new file or an ICM Studio database"
# Every subcommand that takes --db, as a user would type it against a file that is not ours.
COMMANDS = {"runs": ["runs"], "export": ["export", "--run", "1", "--out", "out.csv"], "report": ["report", "--run", "1"],
            "trust": ["trust", "--run", "1", "--no-model"], "run": ["run", "--data", "ok.csv", "--task", "sentiment_single"],
            "resume": ["run", "--resume", "1"]}


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded for an input that should have been refused before")


@pytest.fixture(scope="module")
def a_run(tmp_path_factory) -> bytes:
    """A database holding one finished run (run 1, the fake model on ok.csv), made once."""
    folder = tmp_path_factory.mktemp("a_run")
    (folder / "ok.csv").write_text(OK_CSV)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(run_command, "load_backend", lambda model: FakeLM(strength=6))
        assert cli.main(["run", "--data", "ok.csv", "--task", "sentiment_single", "--steps", "3", "--db", "icm.duckdb"]) == 0
    return (folder / "icm.duckdb").read_bytes()


@pytest.fixture
def here(tmp_path, monkeypatch, a_run):
    """A folder holding ok.csv and icm.duckdb (a_run), the working folder; no model loads."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text(OK_CSV)
    (tmp_path / "icm.duckdb").write_bytes(a_run)
    for command in (run_command, report_command, trust_command):
        monkeypatch.setattr(command, "load_backend", no_model)
    return tmp_path


def refused(argv: list[str], capsys) -> str:
    """The one line `icm argv` answers with, checking exit status 2."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def digest(path) -> str | None:
    path = Path(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def make_duckdb(path: Path, sql: str) -> None:
    con = duckdb.connect(str(path))
    if sql:
        con.execute(sql)
    con.close()


FOREIGN_FILES = {  # name -> (SQL that makes it, what the line says after "<name> is ")
    "migrations.duckdb": ("CREATE TABLE schema_version (version INTEGER); CREATE TABLE mine (a INTEGER)",
                          f"a {FOREIGN} (tables: mine, schema_version); {UNTOUCHED}"),
    "versioned.duckdb": ("CREATE TABLE schema_version (version INTEGER); INSERT INTO schema_version VALUES (3)",
                         f"a {FOREIGN} (tables: schema_version); {UNTOUCHED}"),
    "textversion.duckdb": ("CREATE TABLE schema_version (version VARCHAR); INSERT INTO schema_version VALUES ('3')",
                           f"a {FOREIGN} (tables: schema_version); {UNTOUCHED}"),
    "empty.duckdb": ("", f"an empty {FOREIGN}; {UNTOUCHED}"),
    "lookalike.duckdb": ("CREATE TABLE icm_studio (marker VARCHAR); INSERT INTO icm_studio VALUES ('ours')",
                         f"a {FOREIGN} (tables: icm_studio); {UNTOUCHED}"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("name", sorted(FOREIGN_FILES))
def test_a_foreign_duckdb_file_is_named_and_left_byte_identical_by_every_command(name, command, here, capsys):
    sql, said = FOREIGN_FILES[name]
    make_duckdb(here / name, sql)
    before = digest(here / name)
    assert refused([*COMMANDS[command], "--db", name], capsys) == f"icm {command.replace('resume', 'run')}: {name} is {said}"
    assert digest(here / name) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_table_passed_as_the_database_is_not_a_duckdb_file(command, here, capsys):
    before = digest(here / "ok.csv")
    assert refused([*COMMANDS[command], "--db", "ok.csv"], capsys) == \
        f"icm {command.replace('resume', 'run')}: ok.csv: not a DuckDB database file (left untouched)"
    assert digest(here / "ok.csv") == before


@pytest.mark.parametrize("argv, command", [
    (["export", "--run", "999", "--out", "x.csv"], "export"), (["export", "--run", "-1", "--out", "x.csv"], "export"),
    (["report", "--run", "999"], "report"), (["trust", "--run", "999", "--no-model"], "trust"),
    (["run", "--resume", "999"], "run"), (["finalize", "--run", "999"], "finalize"), (["replay", "--run", "999"], "replay"),
])
def test_a_run_that_does_not_exist_is_named_with_the_runs_there_are(argv, command, here, capsys):
    before = digest(here / "icm.duckdb")
    run_id = argv[argv.index("--run" if "--run" in argv else "--resume") + 1]
    assert refused([*argv, "--db", "icm.duckdb"], capsys) == f"icm {command}: no run {run_id} in icm.duckdb (its runs: 1)"
    assert digest(here / "icm.duckdb") == before and not (here / "x.csv").exists()


def test_trust_with_a_seed_run_that_does_not_exist(here, capsys):
    assert refused(["trust", "--run", "1", "--no-model", "--runs", "1,77", "--db", "icm.duckdb"], capsys) == \
        "icm trust: no run 77 in icm.duckdb (its runs: 1)"


def test_resume_on_a_mistyped_database_creates_nothing(here, capsys):
    assert refused(["run", "--resume", "1", "--db", "typo.duckdb"], capsys) == "icm run: typo.duckdb: no such database"
    assert not (here / "typo.duckdb").exists()


@pytest.mark.parametrize("data, argv, said", [
    ("ok.csv", ["--limit", "0"], "icm run: --limit takes how many groups to use, at least 1; got 0"),
    ("ok.csv", ["--limit", "-3"], "icm run: --limit takes how many groups to use, at least 1; got -3"),
    ("header.csv", [], "icm: header.csv: no rows: the table has a header but no data"),
    ("empty.json", [], "icm: empty.json: no rows: the table is empty"),
    ("columns.json", [], "icm: columns.json: no rows: the table has a header but no data"),
    ("ok.csv", ["--seed", str(2**64)], f"icm run: seed must be below 2**63 (9223372036854775808), got {2**64}"),
    ("ok.csv", ["--max-context", "-1"], "icm: --max-context is a number of tokens (0: the model's own window); got -1"),
    ("nul.csv", [], "icm: nul.csv: line 3: not a text table: the file holds binary data (NUL bytes)"),
    ("surrogate.jsonl", [], "icm: surrogate.jsonl: line 2: not valid Unicode text: a \\uD800-\\uDFFF escape without "
                            "its other half"),
    ("surrogate.json", [], "icm: surrogate.json: row 1: not valid Unicode text: a \\uD800-\\uDFFF escape without "
                           "its other half"),
    ("nowhere.csv", [], "icm: nowhere.csv: no such file"),
])
def test_a_start_that_cannot_run_is_refused_before_the_model_and_leaves_no_file(data, argv, said, here, capsys):
    (here / "header.csv").write_text("text,gold\n")
    (here / "empty.json").write_text("[]")
    (here / "columns.json").write_text('{"text": [], "gold": []}')
    (here / "nul.csv").write_bytes(b"text,gold\nGood,1\nBa\x00d,0\n")
    (here / "surrogate.jsonl").write_text('{"text": "fine", "gold": 1}\n{"text": "half \\ud800 a pair", "gold": 0}\n')
    (here / "surrogate.json").write_text('[{"text": "half \\udc00 a pair", "gold": 0}]')
    assert refused(["run", "--data", data, "--task", "sentiment_single", *argv, "--db", "new.duckdb"], capsys) == said
    assert not (here / "new.duckdb").exists()


def test_a_database_where_no_file_can_be_made(here, capsys):
    (here / "afile").write_text("x")
    argv = ["run", "--data", "ok.csv", "--task", "sentiment_single", "--db"]
    assert refused([*argv, "afile/icm.duckdb"], capsys) == \
        f"icm run: afile/icm.duckdb: cannot create it: {here / 'afile'} is a file, not a folder"
    assert refused([*argv, "afile/deeper/icm.duckdb"], capsys) == \
        f"icm run: afile/deeper/icm.duckdb: cannot create it: {here / 'afile'} is a file, not a folder"
    (here / "folder").mkdir()
    assert refused([*argv, "folder"], capsys) == "icm run: folder is a folder, not a database file"
    assert refused(["runs", "--db", "folder"], capsys) == "icm runs: folder is a folder, not a database file"
    if Path("/proc/self").is_dir():  # a folder nobody can create, root included
        assert refused([*argv, "/proc/icm/icm.duckdb"], capsys).startswith(
            "icm run: /proc/icm/icm.duckdb: cannot create it: cannot write in /proc (")
    assert sorted(p.name for p in here.iterdir()) == ["afile", "folder", "icm.duckdb", "ok.csv"]


def test_an_export_the_task_cannot_make(here, capsys):
    assert refused(["export", "--run", "1", "--format", "preference", "--out", "p.jsonl", "--db", "icm.duckdb"], capsys) == \
        ("icm export: run 1's task 'sentiment_single' is not pairwise (it has no pairwise_fields): the preference "
         "format needs two responses to choose between; export csv or sft instead")
    assert not (here / "p.jsonl").exists()


def test_report_refuses_a_negative_shot_count_before_the_model(here, capsys):
    assert refused(["report", "--run", "1", "--baselines", "--shots", "-2", "--db", "icm.duckdb"], capsys) == \
        "icm report: --shots is how many gold demonstrations to show, 0 or more; got -2"


def test_a_truncated_copy_of_a_real_database_is_named_damaged(here, capsys):
    data = (here / "icm.duckdb").read_bytes()
    for n, cut in enumerate((100, 20_000, len(data) // 2, len(data) - 300_000)):
        name = f"cut{n}.duckdb"
        (here / name).write_bytes(data[:cut])
        for command in ("runs", "export"):
            line = refused([*COMMANDS[command], "--db", name], capsys)
            assert line.startswith(f"icm {command}: {name}: cannot read it as a DuckDB database (damaged or truncated?): "
                                   "IO Error: Could not read enough bytes"), line
        assert (here / name).read_bytes() == data[:cut]


def test_reading_commands_leave_our_own_database_byte_identical(here, capsys):
    before = digest(here / "icm.duckdb")
    for argv in (["runs"], ["export", "--run", "1", "--out", "labels.csv"], ["report", "--run", "1"]):
        capsys.readouterr()
        assert cli.main([*argv, "--db", "icm.duckdb"]) == 0
    assert digest(here / "icm.duckdb") == before


def test_an_empty_database_path_is_refused_not_run_in_memory(here, capsys):
    assert refused(["run", "--data", "ok.csv", "--task", "sentiment_single", "--db", ""], capsys) == \
        "icm run: an empty --db path names no database file"
    assert refused(["runs", "--db", ""], capsys) == "icm runs: an empty --db path names no database file"


def test_an_export_under_a_file_says_which_file(here, capsys):
    assert refused(["export", "--run", "1", "--out", "ok.csv/labels.csv", "--db", "icm.duckdb"], capsys) == \
        "icm export: cannot write ok.csv/labels.csv: ok.csv is a file, not a folder"


def test_an_earlier_versions_run_without_steps_reports_and_exports(here, capsys):
    """A run stored before calibration existed, never stepped: report and export answer, nothing changes."""
    from tests.old_databases import old_database

    old_database(here / "old.duckdb", 1)
    before = digest(here / "old.duckdb")
    capsys.readouterr()
    assert cli.main(["report", "--run", "1", "--db", "old.duckdb"]) == 0
    assert "seed 0, calibration none" in capsys.readouterr().out
    assert cli.main(["export", "--run", "1", "--format", "provenance", "--out", "p.json", "--db", "old.duckdb"]) == 0
    assert digest(here / "old.duckdb") == before
