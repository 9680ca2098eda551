"""Exports hold every example with where its label came from; provenance says what the run was at its end."""
from __future__ import annotations

import io
import json

import pandas as pd

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import RunConfig, SearchConfig
from icm_engine.runs.export import export, labeled_frame
from icm_engine.runs.runner import advance, create_run, open_search, record_steering
from icm_engine.store.database import Store
from tests.fakes import PAIRED, polarity_examples


def _run(final_pass: bool = True, steps: int = 6):
    examples, gold = polarity_examples(10, seed=2, paired=True)
    store = Store(":memory:")
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, gold)
    config = RunConfig(task=PAIRED.name, dataset="polarity",
                       search=SearchConfig(seed=3, steps=steps, k_init=4, stop="steps", final_pass=final_pass))
    backend = FakeLM(strength=6)
    run_id = create_run(store, dataset_id, config, backend)
    search = open_search(store, run_id, backend)
    advance(store, run_id, search, max_steps=3)
    pinned = next(i for i in range(len(examples)) if i not in search.labels)
    record_steering(store, run_id, search, search.pin(pinned, 1))
    excluded = next(i for i in range(len(examples)) if i not in search.labels)
    record_steering(store, run_id, search, search.exclude(excluded))
    record_steering(store, run_id, search, search.set_params(alpha=7.5))
    advance(store, run_id, search)
    return store, run_id, search, pinned, excluded, len(examples)


def test_csv_lists_every_example_with_its_source():
    store, run_id, search, pinned, excluded, n = _run()
    frame = pd.read_csv(io.BytesIO(export(store, run_id, "csv")))
    assert len(frame) == n and frame["uid"].is_unique
    sources = dict(zip(frame.index, frame["source"]))
    assert sources[pinned] == "person" and sources[excluded] == "excluded"
    assert set(frame["source"]) <= {"search", "final_pass", "person", "excluded"}
    assert (frame["source"] == "final_pass").sum() > 0  # 6 steps leave examples for the final pass
    labeled = frame[frame["source"] != "excluded"]
    assert labeled["label"].notna().all() and labeled["confidence"].between(0, 1).all()
    assert frame.loc[excluded, ["label", "confidence"]].isna().all()
    final = store.events(run_id).iloc[-1]
    assert final["kind"] == "final_pass"
    assert (frame[frame["source"] == "final_pass"]["last_set_iteration"] == final["iteration"]).all()
    assert frame["label"].dropna().astype(int).tolist() == [search.labels[i].label for i in sorted(search.labels)]


def test_without_the_final_pass_the_unlabeled_are_listed_not_dropped():
    store, run_id, search, _, _, n = _run(final_pass=False)
    frame = labeled_frame(store, run_id)
    assert len(frame) == n
    unlabeled = frame[frame["source"] == "unlabeled"]
    assert len(unlabeled) == len(search.unlabeled()) > 0 and unlabeled["label"].isna().all()
    sft = [json.loads(line) for line in export(store, run_id, "sft").decode().splitlines()]
    assert len(sft) == len(search.labels)  # fine-tuning files hold labeled examples only
    record = json.loads(export(store, run_id, "provenance"))
    assert record["dataset_size"] == n and record["labeled"] == len(search.labels)
    assert record["coverage"] == len(search.labels) / n and record["by_source"]["unlabeled"] == len(unlabeled)


def test_provenance_records_steering_and_the_settings_in_force_at_the_end():
    store, run_id, search, pinned, excluded, n = _run()
    record = json.loads(export(store, run_id, "provenance"))
    assert record["config"]["search"]["alpha"] == 20.0 and record["effective_settings"]["alpha"] == 7.5
    kinds = [(e["kind"], e["example"]) for e in record["steering"]]
    assert kinds == [("pin", pinned), ("exclude", excluded), ("set_param", None)]
    assert record["steering"][2]["note"] == "alpha=7.5" and record["steering"][0]["iteration"] == 2
    assert record["steering"][2]["changes"] == [{"parameter": "alpha", "old": 20.0, "new": 7.5}]
    assert record["steering"][0]["changes"] == []
    assert record["iterations"] == search.iteration == 6
    assert record["coverage"] == (n - 1) / n and record["by_source"]["excluded"] == 1
    assert sum(record["by_source"].values()) == n
    assert export(store, run_id, "provenance") == export(store, run_id, "provenance")  # no wall clock in it
