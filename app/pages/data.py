"""Data: bring examples into the database, from a bundled sample or an uploaded table."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from icm_engine.core.tasks import RULES, Task, builtin_task_names, load_task, template_fields
from icm_engine.data import datasets
from icm_engine.data.base import DatasetError, LoadedDataset
from icm_engine.runs.manager import RunManager

from .. import services
from ..readers import LARGE_DATASET

NONE = "(none)"
CUSTOM = "custom…"


def _column_choice(label: str, columns: list[str], guess: list[str], key: str, optional: bool = True) -> str | None:
    """A column for one role. A required field with no column of its name starts unchosen: taking
    the first column would feed, say, an id column to the model as text without a word."""
    options = ([NONE] if optional else []) + columns
    default = next((c for c in guess if c in columns), options[0] if optional else None)
    value = st.selectbox(label, options, index=None if default is None else options.index(default), key=key,
                         placeholder="choose a column")
    return None if value == NONE else value


def _custom_task() -> Task:
    """A task defined on the page: template over named fields, two label words, a consistency rule."""
    name = st.text_input("Task name", "custom", key="data.custom.name")
    template = st.text_area("Prompt template (ends right before the label word; fields in {braces})",
                            "Input: {text}\nI think this is", key="data.custom.template")
    words = st.columns(2)
    false_word = words[0].text_input("Label word for False", " False", key="data.custom.false")
    true_word = words[1].text_input("Label word for True", " True", key="data.custom.true")
    fields = tuple(template_fields(template))  # refuses {text.__class__} and other non-field braces
    rule = st.selectbox("Consistency rule", RULES, index=RULES.index("none"), key="data.custom.rule",
                        help="exclusive: in a group, claims with different keys cannot both be True; "
                             "asymmetric_pair / complementary: a group's two claims are never both True "
                             "nor both False; none: no constraint.")
    return Task(name=name, template=template, label_words=(false_word, true_word), fields=fields, rule=rule,
                group_field="group" if rule != "none" else None, key_field="key" if rule == "exclusive" else None,
                description="defined in the studio")


def _pick_task(default: str, key: str, allow_custom: bool = True) -> Task | None:
    names = builtin_task_names()
    options = names + ([CUSTOM] if allow_custom else [])
    choice = st.selectbox("Task", options, index=options.index(default) if default in options else 0, key=key)
    if choice != CUSTOM:
        task = load_task(choice)
        st.caption(task.description)
        return task
    try:
        return _custom_task()
    except ValueError as error:
        st.error(f"Task definition: {error}")
        return None


def _store(manager: RunManager, loaded: LoadedDataset) -> None:
    """Write in one transaction with a progress bar: on any error nothing of the dataset stays."""
    bar = st.progress(0.0, text=f"Writing {len(loaded.examples)} examples…")
    dataset_id = manager.add_dataset(loaded, progress=lambda f: bar.progress(f, text=f"Writing… {f:.0%}"))
    bar.progress(1.0, text="Done")
    gold = "with gold labels (audit only)" if loaded.gold else "without gold labels"
    st.success(f"Loaded dataset #{dataset_id} '{loaded.name}': {len(loaded.examples)} examples, task "
               f"{loaded.task.name}, {gold}.")
    st.session_state["data.loaded_id"] = dataset_id


def _from_sample(manager: RunManager) -> None:
    samples = datasets.list_samples()
    first = "sentiment_yelp" if "sentiment_yelp" in samples else samples[0]  # the concept small models find
    name = st.selectbox("Sample", samples, index=samples.index(first), key="data.sample")
    file, default_task, attribution = datasets.SAMPLES[name]
    table = datasets.read_table(datasets.SAMPLE_DIR / file)
    st.caption(attribution)
    st.dataframe(table.head(20), height=220)
    st.caption(f"{len(table):,} row{'s' * (len(table) != 1)} · columns: {', '.join(map(str, table.columns))}")
    # a sample comes with its own column mapping, so only built-in tasks apply; each sample keeps its own choice
    task = _pick_task(default_task, key=f"data.sample.task.{name}", allow_custom=False)
    limit = st.number_input("Use the first N groups (sentences, questions, pairs); 0 = all", 0, 100_000, 0,
                            key="data.sample.limit")
    if st.button("Load sample", type="primary", key="data.sample.load", disabled=task is None):
        spec = f"sample:{name}"
        try:
            with st.spinner("Reading the sample…"):
                loaded = datasets.load_any(spec, task=task.name, limit=int(limit) or None)
            loaded.source = datasets.dataset_source(spec, int(limit) or None, loaded.task.name)  # as `icm run` records it
            _store(manager, loaded)
        except (ValueError, KeyError) as error:
            st.error(str(error))


def _from_upload(manager: RunManager) -> None:
    upload = st.file_uploader("Table (CSV, JSONL or Parquet)", type=["csv", "tsv", "jsonl", "json", "parquet"],
                              key="data.upload")
    if upload is None:
        return
    try:
        table = datasets.read_table(upload)  # the format follows the file name
    except (ValueError, OSError) as error:
        st.error(f"Could not read {upload.name}: {error}")
        return
    st.dataframe(table.head(20), height=220)
    st.caption(f"{len(table):,} row{'s' * (len(table) != 1)} · columns: {', '.join(map(str, table.columns))}")
    columns = [str(c) for c in table.columns]
    fits = [n for n in builtin_task_names() if set(load_task(n).fields) <= set(columns)]
    if not fits:
        needs = "; ".join(f"{n} needs {', '.join(load_task(n).fields)}" for n in builtin_task_names())
        st.warning(f"No built-in task matches the columns of {upload.name} ({', '.join(columns)}): {needs}. "
                   "Pick a task and map its fields to columns below, or define a custom task.")
    if len(table) > LARGE_DATASET:
        st.info(f"{len(table):,} rows. Load them all and pick the scalable algorithm on the Run page (Algorithm 3: "
                f"a learner fit on the other folds scores each fold; 1,000 sentences in about 6 minutes here, "
                f"docs/scalable.md). The in-context search (Algorithm 1) holds every label in one prompt: over all "
                f"of them it takes hours on a CPU with a small model, so for it set a number of rows below.")
    task = _pick_task(fits[0] if fits else CUSTOM, key="data.upload.task")
    if task is None:
        return
    expand = False
    if task.rule == "complementary" and "claim" in task.fields and "claim" not in columns:
        expand = st.checkbox("Each row is one sentence: make its two claims (positive / negative)", True,
                             key="data.upload.expand")
    st.markdown("**Columns**")
    cols = st.columns(2)
    mapping = {}
    source_fields = [f for f in task.fields if not (expand and f == "claim")]
    for n, field in enumerate(source_fields):
        with cols[n % 2]:
            mapping[field] = _column_choice(f"Task field '{field}'", columns, [field], f"data.map.{field}", optional=False)
    with cols[0]:
        id_column = _column_choice("Id column", columns, ["id", "uid"], "data.map.id")
        gold_column = _column_choice("Gold label column (audit only)", columns, ["gold", "label"], "data.map.gold")
    with cols[1]:
        group_column = None if expand else _column_choice("Group column", columns, ["group", task.group_field or ""],
                                                          "data.map.group")
        key_column = None if expand else _column_choice("Key column", columns, ["key", task.key_field or ""],
                                                        "data.map.key")
    limit = st.number_input("Use the first N rows; 0 = all", 0, 10_000_000,
                            0, key="data.upload.limit")
    name = st.text_input("Dataset name", Path(upload.name).stem, key="data.upload.name")
    unmapped = [f for f, c in mapping.items() if c is None]
    if unmapped:
        st.caption(f"Choose a column for {', '.join(repr(f) for f in unmapped)} to load the table.")
    if st.button("Load table", type="primary", key="data.upload.load", disabled=bool(unmapped)):
        frame = table.head(int(limit)) if limit else table
        try:
            with st.spinner("Checking every row…"):
                if expand:
                    frame = datasets.expand_sentiment(frame, mapping["text"], gold_column, id_column)
                    mapping, id_column, gold_column = {"text": "text", "claim": "claim"}, "id", gold_column and "gold"
                    group_column, key_column = "group", "key"
                loaded = datasets.build_dataset(frame, task, mapping, id_column, group_column, key_column, gold_column,
                                                name=name, source=f"upload:{upload.name}")
            _store(manager, loaded)
        except (DatasetError, ValueError) as error:
            st.error(f"Nothing was loaded from {upload.name}: {error}")


def render_data(manager: RunManager) -> None:
    st.title("Data")
    source = st.radio("Source", ["Bundled sample", "Upload a table"], horizontal=True, key="data.source")
    if source == "Bundled sample":
        _from_sample(manager)
    else:
        _from_upload(manager)
    st.subheader("Datasets in the database")
    stored = services.datasets(manager)
    if len(stored):
        st.dataframe(stored[["dataset_id", "name", "n_examples", "has_gold", "n_runs", "source", "created_at"]],
                     hide_index=True)
    else:
        st.caption("None yet.")
    st.caption(f"Database: {manager.db_path}")

