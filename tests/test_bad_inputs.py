"""Bad input gets a one-line answer naming the file, the line or row, and the column; exit status 2.

Each case goes through `icm run` as a user would type it; the data is refused before any model loads.
"""
from __future__ import annotations

import pytest

from icm_engine import cli
from icm_engine.core.tasks import Example, Task, load_task
from icm_engine.data.base import DatasetError
from icm_engine.data.datasets import read_table

pd = pytest.importorskip("pandas")

CASES = {  # file name -> (bytes, the message after "icm: <file>: ")
    "empty.csv": (b"", "empty file"),
    "latin1.csv": ("text,gold\nCaf\u00e9 was fine,1\n".encode("latin-1"),
                   "line 2: not a UTF-8 text table: byte 0xe9 cannot be decoded (save the file as UTF-8)"),
    "binary.csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 3: not a text table: the file holds binary data (NUL bytes)"),
    "quote.csv": (b'text,gold\n"never closed,1\nnext,0\n', "line 3: not a valid CSV table (unexpected end of data)"),
    "extra.csv": (b"id,text,gold\n1,Good,1\n2,Bad,0,surplus\n",
                  "line 3: 4 fields where the header has 3 (id, text, gold); quote cells that hold a comma"),
    "short.csv": (b"id,text,gold\n1,Good,1\n2,Bad\n",
                  "line 3: 2 fields where the header has 3 (id, text, gold); quote cells that hold a comma"),
    "header.csv": (b"text,text\nGood,Bad\n", "line 1: the header needs distinct, non-empty column names; got ['text', 'text']"),
    "columns.csv": (b"foo,bar\n1,2\n", "column 'text': no such column for field 'text'; the table has: foo, bar"),
    "gold.csv": (b"text,gold\nGood,2\n", "line 2, column 'gold': gold must be 0, 1, true or false, got '2'"),
    "blank.csv": (b"text,gold\nGood,1\n  ,0\n", "line 3, column 'text': empty value"),
    "scalar.json": (b"42", "JSON must be a list of records or a dict of column lists, not a int"),
    "broken.json": (b'[{"text": "a"},\n{"text": ]', "line 2: not valid JSON (Expecting value)"),
    "numbers.jsonl": (b'{"text": "ok", "gold": 1}\n{"text": 5, "gold": 1}\n',
                      "line 2, column 'text': must be text, got int 5; convert the column to text if that is meant"),
    "object.jsonl": (b'{"text": {"x": 1}, "gold": 0}\n',
                     "line 1, column 'text': must be text, got dict {'x': 1}; convert the column to text if that is meant"),
    "scalar.jsonl": (b'{"text": "ok"}\n[1, 2]\n', "line 2: each line must be a JSON object"),
    "table.xlsx": (b"PK\x03\x04", "cannot tell the format of 'table.xlsx' from its name: tables end in .csv, .json, "
                                  ".jsonl, .ndjson, .parquet, .pq, .tsv"),
    "not.parquet": (b"text,gold\n", "not a readable Parquet file"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_table_gets_one_line_naming_the_place(name, tmp_path, capsys, monkeypatch):
    data, message = CASES[name]
    (tmp_path / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "icm.duckdb"
    assert cli.main(["run", "--data", name, "--task", "sentiment_single", "--db", str(db)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"icm: {name}: {message}"), err
    assert len(err.splitlines()) == 1
    assert not db.exists()  # a failed start leaves nothing behind


def test_missing_file_unknown_task_and_task_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text("text,gold\nGood,1\n")
    (tmp_path / "x.json").write_text('{"name": "x", "template": "{text}", "fields": ["text"]}')
    for argv, message in (
        (["--data", "nowhere.csv", "--task", "sentiment_single"], "icm: nowhere.csv: no such file"),
        (["--data", "ok.csv", "--task", "nosuch"], "icm: ok.csv: unknown task 'nosuch'; built-in tasks:"),
        (["--data", "ok.csv", "--task", "../../../../../../" + str(tmp_path / "x")], "icm: ok.csv: unknown task '../"),
    ):
        assert cli.main(["run", *argv, "--db", str(tmp_path / "icm.duckdb")]) == 2
        assert capsys.readouterr().err.startswith(message)
    with pytest.raises(KeyError, match="unknown task"):
        load_task("sentiment/../sentiment")


def test_one_gold_rule_for_every_format(tmp_path):
    """CSV text "1.0" and a Parquet float 1.0 mean the same; 2 and 0.5 are refused in both."""
    from icm_engine.data.datasets import dataset_from_table

    csv = read_table(_write(tmp_path / "g.csv", b"text,gold\nGood,1.0\nBad,0.0\nMeh,true\n"))
    parquet_file = tmp_path / "g.parquet"
    pd.DataFrame({"text": ["Good", "Bad", "Meh"], "gold": [1.0, 0.0, 1.0]}).to_parquet(parquet_file)
    golds = [dataset_from_table(t, "sentiment_single").gold for t in (csv, read_table(parquet_file))]
    assert golds[0] == golds[1] == {0: 1, 1: 0, 2: 1}
    for bad in (2.0, 0.5):
        frame = pd.DataFrame({"text": ["Good"], "gold": [bad]})
        with pytest.raises(DatasetError, match="gold must be 0, 1, true or false"):
            dataset_from_table(frame, "sentiment_single")
        with pytest.raises(DatasetError, match="gold must be 0, 1, true or false"):
            dataset_from_table(read_table(_write(tmp_path / "b.csv", f"text,gold\nGood,{bad}\n".encode())), "sentiment_single")


def test_parquet_numbers_as_text_are_refused_with_row_and_column(tmp_path):
    from icm_engine.data.datasets import dataset_from_table

    path = tmp_path / "n.parquet"
    pd.DataFrame({"text": [1, 2], "gold": [1, 0]}).to_parquet(path)
    with pytest.raises(DatasetError, match=r"^row 1, column 'text': must be text, got int 1"):
        dataset_from_table(read_table(path), "sentiment_single")


def test_ragged_row_never_shifts_columns(tmp_path):
    """Before: pandas made the first column the index, so ids became text and text became gold."""
    with pytest.raises(DatasetError, match="^line 2: 4 fields where the header has 3"):
        read_table(_write(tmp_path / "r.csv", b"id,text,gold\n1,Good food,1,extra\n2,Bad,0\n"))
    table = read_table(_write(tmp_path / "ok.csv", b'id,text,gold\n1,"Good, really",1\n\n2,Bad,0\n'))
    assert list(table["text"]) == ["Good, really", "Bad"] and table.attrs["icm_lines"] == [2, 4]


def test_templates_substitute_named_fields_only():
    task = Task(name="t", template="Q: {text} {{braces}}", fields=("text",))
    assert task.render_query(Example("u", {"text": "{text.__class__} stays text"})) == \
        "Q: {text.__class__} stays text {braces}"
    for template in ("{text.__class__.__mro__}", "{text.__doc__}", "{text:{text.__class__}}", "{}", "{text[0]}",
                     "{0}", "open { brace"):
        with pytest.raises(ValueError, match="is not a field"):
            Task(name="t", template=template, fields=("text",))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_model_that_cannot_load_is_one_line_and_stores_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text("text,gold\nGood,1\n")
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    db = tmp_path / "icm.duckdb"
    for model, message in ((str(folder), f"icm: {folder} is not a model folder: it lacks model weights "
                                         "(*.safetensors or *.bin), a tokenizer"),
                           ("no-such-model", "icm: model 'no-such-model' is not a bundled name")):
        assert cli.main(["run", "--data", "ok.csv", "--task", "sentiment_single", "--model", model, "--db", str(db)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(message), err[-1]
    assert not db.exists()  # the data was read, but the database is made only once a model loaded


def test_a_table_too_large_to_read_whole_is_refused_before_reading(tmp_path, capsys, monkeypatch):
    from icm_engine.data import datasets

    monkeypatch.setattr(datasets, "MAX_TABLE_MB", 1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "huge.csv").write_bytes(b"text,gold\n" + b"a fine review,1\n" * 80_000)  # 1.2 MB
    assert cli.main(["run", "--data", "huge.csv", "--task", "sentiment_single", "--db", str(tmp_path / "i.duckdb")]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "icm: huge.csv: the file is 1 MB; tables over 1 MB are not read whole (it would take ~30x that in memory)")
