"""Datasets: gold-labelled data and user tables turned into the Examples the search sees.

The search reads only `LoadedDataset.examples` (inputs, group, key); gold labels ride beside
them in `LoadedDataset.gold`, for evaluation. Builders keep gold out of everything else:
- uids are neutral (source positions, never "chosen" or "correct"),
- keys come from inputs only (a GSM8K solution's final answer; the order "ab"/"ba" of a pair,
  where which response sits first in "ab" is a seeded coin, not the chosen one),
- the claims of a group are shuffled with a RNG seeded per group, so position is no tell.

LoadedDataset, DatasetError and the helpers every loader shares live in data/base.py; loaders
for the real data in ../shared/data in data/shared_data.py. Bundled samples live in sample_data/
and are built from that data by data/sample_builder.py.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from ..core.tasks import Example, Task, builtin_task_names, load_task
from .base import (
    ATTRIBUTION, DatasetError, LoadedDataset, check_unicode, gold_value, gsm8k_final_answer, read_jsonl,
    sentiment_claims,
)

if TYPE_CHECKING:  # pandas costs a second to import; the real-data loaders do not need it
    import pandas as pd

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "sample_data"

# Keys a task can derive from its own inputs when a table has no key column.
KEY_DERIVERS: dict[str, Callable[[Mapping[str, str]], str | None]] = {
    "gsm8k_verification": lambda fields: gsm8k_final_answer(fields["solution"]),
}


# ---- tables: uploads and bundled samples ---------------------------------------------------


FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}


def _format_of(source) -> str:
    """The format from a path's suffix, or from .name of an upload (e.g. Streamlit's UploadedFile)."""
    name = str(source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "")).lower()
    if Path(name).suffix in FORMATS:
        return FORMATS[Path(name).suffix]
    endings = ", ".join(sorted(FORMATS))
    raise DatasetError(f"cannot tell the format of {name!r} from its name: tables end in {endings}")


def _decoded(data: bytes) -> str:
    """The bytes as UTF-8 text (a BOM dropped), or an error that says what the file is not."""
    if (nul := data.find(b"\x00", 0, 8192)) >= 0:
        raise DatasetError("not a text table: the file holds binary data (NUL bytes)", line=data[:nul].count(b"\n") + 1)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise DatasetError(f"not a UTF-8 text table: byte 0x{data[error.start]:02x} cannot be decoded "
                           f"(save the file as UTF-8)", line=line) from None


def _csv_frame(text: str, sep: str) -> pd.DataFrame:
    """Every cell as text, blank lines skipped; a row with more or fewer fields than the header is
    an error naming its line (pandas would shift the columns or pad the row and carry on)."""
    import csv

    import pandas as pd

    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    try:
        header = next((row for row in reader if row), None)
        if header is None:
            raise DatasetError("empty file: no header row")
        header = [h.strip() for h in header]
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice or "" in header:
            raise DatasetError(f"the header needs distinct, non-empty column names; got {header}", line=reader.line_num)
        rows, lines = [], []
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise DatasetError(f"{len(row)} field{'s' * (len(row) != 1)} where the header has {len(header)} "
                                   f"({', '.join(header)}); quote cells that hold a {'tab' if sep == chr(9) else 'comma'}",
                                   line=reader.line_num)
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as error:  # an unterminated quote, a stray NUL
        raise DatasetError(f"not a valid {'TSV' if sep == chr(9) else 'CSV'} table ({error})", line=reader.line_num) from None
    frame = pd.DataFrame(rows, columns=header, dtype=str)
    frame.attrs["icm_lines"] = lines
    return frame


# A table is read whole: parsed cells take ~30x the file's bytes (a 7.5 MB CSV peaks near 100 MB
# above the imports), so a file past this is refused with a way out instead of exhausting memory.
MAX_TABLE_MB = 256


def read_table(path_or_buffer, fmt: str | None = None) -> pd.DataFrame:
    """A CSV/TSV, JSONL, JSON (records or columns) or Parquet table; text cells stay text.

    CSV/TSV and JSONL frames carry their file line numbers in df.attrs["icm_lines"] so errors can name them.
    """
    import pandas as pd

    fmt = fmt or _format_of(path_or_buffer)
    size = getattr(path_or_buffer, "size", None) if hasattr(path_or_buffer, "read") else Path(path_or_buffer).stat().st_size
    if size is not None and size > MAX_TABLE_MB * 2**20:
        raise DatasetError(f"the file is {size / 2**20:,.0f} MB; tables over {MAX_TABLE_MB} MB are not read whole "
                           "(it would take ~30x that in memory): take a sample of its rows into a smaller file first")
    data = path_or_buffer.read() if hasattr(path_or_buffer, "read") else Path(path_or_buffer).read_bytes()
    if not data:
        raise DatasetError("empty file")
    if fmt == "parquet":
        try:
            return pd.read_parquet(io.BytesIO(data) if isinstance(data, bytes) else data)
        except Exception as error:  # pyarrow's errors have no common base worth naming
            raise DatasetError(f"not a readable Parquet file ({type(error).__name__}: {error})") from None
    text = _decoded(data) if isinstance(data, bytes) else data
    if fmt in ("csv", "tsv"):
        # every cell as text and "" for blanks: a review reading "NA" must stay a review
        return _csv_frame(text, "\t" if fmt == "tsv" else ",")
    if fmt == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not valid JSON ({error.msg})", line=error.lineno) from None
        if isinstance(records, dict) and not all(isinstance(v, list) for v in records.values()):
            raise DatasetError("JSON must be a list of records or a dict of column lists")
        if isinstance(records, list) and not all(isinstance(r, dict) for r in records):
            raise DatasetError("JSON must be a list of records (objects) or a dict of column lists")
        if not isinstance(records, (list, dict)):
            raise DatasetError(f"JSON must be a list of records or a dict of column lists, not a {type(records).__name__}")
        for row, record in enumerate(records if isinstance(records, list) else [records], 1):
            check_unicode(record, row=row if isinstance(records, list) else None)
        try:
            return pd.DataFrame(records)
        except ValueError as error:  # column lists of different lengths
            raise DatasetError(f"JSON columns do not line up ({error})") from None
    if fmt != "jsonl":
        raise DatasetError(f"unknown format {fmt!r}")
    numbered = read_jsonl(text)
    frame = pd.DataFrame.from_records([record for _, record in numbered])
    frame.attrs["icm_lines"] = [n for n, _ in numbered]
    return frame


def _places(frame: pd.DataFrame) -> Callable[[int], dict]:
    """Where each row came from: its CSV/JSONL line while the frame is still as read, else its
    1-based row. Whether the lines still fit is checked once per frame: checked per row, it made
    loading quadratic (12,000 rows took 16 s)."""
    lines = frame.attrs.get("icm_lines")  # pandas copies attrs onto filtered frames: check it still fits
    fits = lines is not None and len(lines) == len(frame) and list(frame.index) == list(range(len(lines)))
    return lambda position: {"row": position + 1, "line": lines[position] if fits else None}


def _missing(value) -> bool:
    try:
        return value is None or bool(value != value)  # NaN and NaT differ from themselves
    except (TypeError, ValueError):  # pd.NA (its comparisons are NA too), or an array cell
        return True


def _text(value) -> str | None:
    """A cell as an id, group or key: text or a number (as text); None when missing or blank."""
    if not isinstance(value, str) and _missing(value):
        return None
    value = value if isinstance(value, str) else str(value.item() if hasattr(value, "item") else value)
    return value if value.strip() else None


def _input_text(value, where: dict, column: str) -> str | None:
    """A cell a prompt will show: it must be text. A number or an object (Parquet, JSON) would
    reach the model as "1" or "{'x': 1}", which no one meant."""
    if value is None or isinstance(value, str):
        return _text(value)
    scalar = not hasattr(value, "__len__")  # a list or array cell is never "missing"
    if scalar and _missing(value):
        return None
    raise DatasetError(f"must be text, got {type(value).__name__} {value!r}; convert the column to text if that is meant",
                       column=column, **where)


def _column(frame: pd.DataFrame, column: str | None, what: str) -> list:
    if column is None:
        return [None] * len(frame)
    if column not in frame.columns:
        have = ", ".join(map(str, frame.columns))
        raise DatasetError(f"no such column for {what}; the table has: {have}", column=column)
    return frame[column].tolist()


def _require_rows(df: pd.DataFrame) -> None:
    if len(df) == 0:  # said first: "no such column" would send the user looking for a typo
        raise DatasetError("no rows: the table has a header but no data" if len(df.columns) else "no rows: the table is empty")


def build_dataset(df: pd.DataFrame, task: Task | str, columns: Mapping[str, str] | None = None,
                  id_column: str | None = None, group_column: str | None = None, key_column: str | None = None,
                  gold_column: str | None = None, name: str = "uploaded", source: str = "",
                  attribution: str = "") -> LoadedDataset:
    """Examples from a table. `columns` maps task field -> table column (default: same names).

    Gold values go to `gold` only; a gold column used as any input is refused.
    """
    task = task if isinstance(task, Task) else load_task(task)
    _require_rows(df)
    columns = dict(columns or {f: f for f in task.fields})
    for f in task.fields:
        if f not in columns:
            raise DatasetError(f"task {task.name!r} field {f!r} has no column", column=f)
    if gold_column is not None and gold_column in {*columns.values(), id_column, group_column, key_column}:
        raise DatasetError("the gold column cannot also be an input, id, group or key", column=gold_column)
    if task.rule != "none" and group_column is None:
        raise DatasetError(f"rule {task.rule!r} needs a group column", column=task.group_field)
    derive = KEY_DERIVERS.get(task.name) if key_column is None else None
    if task.rule == "exclusive" and key_column is None and derive is None:
        raise DatasetError("rule 'exclusive' needs a key column", column=task.key_field)
    values = {f: _column(df, c, f"field {f!r}") for f, c in columns.items() if f in task.fields}
    ids, groups, keys = (_column(df, c, w) for c, w in ((id_column, "id"), (group_column, "group"), (key_column, "key")))
    golds = _column(df, gold_column, "gold")
    examples, gold, seen, members, where = [], {}, set(), {}, _places(df)
    for i in range(len(df)):
        fields = {f: _input_text(values[f][i], where(i), columns[f]) for f in task.fields}
        for f in (f for f in task.fields if fields[f] is None):
            raise DatasetError("empty value", column=columns[f], **where(i))
        uid = _text(ids[i]) if id_column else f"{name}-{i + 1:05d}"
        if uid is None or uid in seen:
            raise DatasetError("ids must be present and unique", column=id_column, **where(i))
        seen.add(uid)
        group, key = _text(groups[i]), _text(keys[i])
        if group is None and task.rule != "none":
            raise DatasetError(f"rule {task.rule!r} needs a group", column=group_column, **where(i))
        if derive is not None:
            key = derive(fields) or f"unparsed:{uid}"
        if key is None and task.rule == "exclusive":
            raise DatasetError("rule 'exclusive' needs a key", column=key_column, **where(i))
        if task.rule in ("asymmetric_pair", "complementary"):
            members.setdefault(group, []).append(key)
            if len(members[group]) > 2 or (key is not None and members[group].count(key) > 1):
                raise DatasetError(f"group {group!r}: rule {task.rule!r} pairs exactly two claims with different keys",
                                   column=group_column, **where(i))
        if gold_column is not None:
            gold[i] = gold_value(golds[i])
            if gold[i] is None:
                raise DatasetError(f"gold must be 0, 1, true or false, got {golds[i]!r}", column=gold_column, **where(i))
        examples.append(Example(uid, fields, group=group, key=key))
    return LoadedDataset(name, task, examples, gold if gold_column else None, source, attribution)


def expand_sentiment(df: pd.DataFrame, text_column="text", gold_column=None, id_column=None, seed=0) -> pd.DataFrame:
    """Sentence rows -> claim rows (id, text, claim, group, key[, gold]) for the complementary task.

    A sentence-level gold (1 = positive) becomes per-claim gold: the claim matching it is True.
    """
    import pandas as pd

    texts, golds, ids = (_column(df, c, w) for c, w in ((text_column, "text"), (gold_column, "gold"), (id_column, "id")))
    rows, seen, where = [], set(), _places(df)
    for i in range(len(df)):
        text = _input_text(texts[i], where(i), text_column)
        if text is None:
            raise DatasetError("empty value", column=text_column, **where(i))
        positive = gold_value(golds[i]) if gold_column else 0
        if positive is None:
            raise DatasetError(f"gold must be 0, 1, true or false, got {golds[i]!r}", column=gold_column, **where(i))
        uid = _text(ids[i]) if id_column else f"s{i + 1:05d}"
        if uid is None or uid in seen:
            raise DatasetError("ids must be present and unique", column=id_column, **where(i))
        seen.add(uid)
        for example, value in sentiment_claims(uid, text, positive, seed):
            row = {"id": example.uid, **example.fields, "group": example.group, "key": example.key}
            rows.append(row | ({"gold": value} if gold_column else {}))
    return pd.DataFrame(rows, columns=["id", "text", "claim", "group", "key"] + (["gold"] if gold_column else []))


def dataset_from_table(df: pd.DataFrame, task: Task | str, name="uploaded", source="", attribution="") -> LoadedDataset:
    """build_dataset with columns guessed: task fields by name; id, gold/label, group, key if present."""
    task = task if isinstance(task, Task) else load_task(task)
    _require_rows(df)
    present = lambda *names: next((n for n in names if n and n in df.columns), None)  # noqa: E731
    gold, ids = present("gold", "label"), present("id")
    if task.rule == "complementary" and "claim" in task.fields and "claim" not in df.columns:
        # sentence rows (text[, gold]) as for sentiment_single: make the two claims of each
        df, ids, gold = expand_sentiment(df, present("text") or "text", gold, ids), "id", gold and "gold"
    return build_dataset(
        df, task, id_column=ids, group_column=present("group", task.group_field),
        key_column=present("key", task.key_field), gold_column=gold, name=name, source=source, attribution=attribution,
    )


# name -> (file, default task, attribution). The Yelp sample opens as single claims: the bundled
# 270M model cannot read "This review is negative." in context (with gold demonstrations its
# P(True) on those claims ranks the sentences backwards), so on complementary claims the search
# lands on the right or the inverted labeling by seed; `task="sentiment"` still gives those.
SAMPLES = {
    "sentiment_yelp": ("sentiment_yelp.csv", "sentiment_single", ATTRIBUTION["sentiment"]),
    "truthfulqa": ("truthfulqa.jsonl", "truthfulqa", ATTRIBUTION["truthfulqa"]),
    "gsm8k_verification": ("gsm8k_verification.jsonl", "gsm8k_verification", ATTRIBUTION["gsm8k"]),
    "hh_rlhf_harmless": ("hh_rlhf_harmless.jsonl", "hh_rlhf_harmless", ATTRIBUTION["hh_rlhf"]),
}


def list_samples() -> list[str]:
    return sorted(SAMPLES)


def load_sample(name: str, task: Task | str | None = None) -> LoadedDataset:
    """A bundled sample, read like an upload; `task` may override (sentiment_yelp + sentiment, two claims a sentence)."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; samples: {', '.join(list_samples())}")
    file, default_task, attribution = SAMPLES[name]
    path = SAMPLE_DIR / file
    return dataset_from_table(read_table(path), task or default_task, name, str(path), attribution)


def _first_groups(dataset: LoadedDataset, limit: int | None) -> LoadedDataset:
    """Keep the examples of the first `limit` groups (an ungrouped example is its own group)."""
    if limit is None:
        return dataset
    rank: dict = {}  # group -> order of first appearance
    keep = []
    for i, example in enumerate(dataset.examples):
        group = example.group if example.group is not None else ("", i)
        if rank.setdefault(group, len(rank)) < limit:
            keep.append(i)
    gold = {new: dataset.gold[old] for new, old in enumerate(keep)} if dataset.gold is not None else None
    return LoadedDataset(dataset.name, dataset.task, [dataset.examples[i] for i in keep], gold,
                         dataset.source, dataset.attribution, dataset.notes)


def load_any(spec: str, task: Task | str | None = None, limit: int | None = None) -> LoadedDataset:
    """"sample:<name>", "shared:<dataset>" or a table file (then `task` is required)."""
    task_name = task.name if isinstance(task, Task) else task
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number of groups, at least 1; got {limit!r}")
    if spec.startswith("shared:"):
        from .shared_data import SHARED

        which = spec.split(":", 1)[1]
        if which not in SHARED:
            raise KeyError(f"unknown shared dataset {which!r}; one of {', '.join(SHARED)}")
        dataset = SHARED[which](task_name, limit)
    elif spec.startswith("sample:"):
        dataset = _first_groups(load_sample(spec.split(":", 1)[1], task), limit)
    else:
        if task is None:
            raise ValueError(f"{spec}: a table file needs a task ({', '.join(builtin_task_names())} or a custom one)")
        dataset = _first_groups(dataset_from_table(read_table(spec), task, Path(spec).stem, spec), limit)
    if task_name is not None and dataset.task.name != task_name:
        raise ValueError(f"{spec} is a {dataset.task.name!r} dataset, not {task_name!r}")
    if not dataset.examples:
        raise DatasetError("no examples to label")
    return dataset


def dataset_source(spec: str, limit: int | None, task: str) -> str:
    """What the store records as a load's source: the spec, the limit and the task, written the same
    way by `icm run` and the studio's Data page. (A load is identified by its content, not this.)"""
    return f"{spec}|limit={limit}|task={task}"
