"""Batched runs in the studio (runs/batch_driver.py, app/widgets.batch_panel): started from the Run
form, run one batch after another by the RunManager, paused and resumed from the Run page, shown
batch by batch on Live and Home with each batch run under its parent, exported over the whole
dataset. Every action goes through the pages' widgets."""
from __future__ import annotations

import json
import time
from dataclasses import replace

import pandas as pd

from icm_engine.backends.fake import FakeLM
from icm_engine.runs.export import export
from icm_engine.runs.manager import RunManager
from tests.conftest import add_polarity_dataset, fake_run_config
from tests.test_app_pages import open_page, plotly_titles


def batched_config(batch_size: int = 8, steps: int = 60):
    config = fake_run_config(steps=steps)
    return replace(config, task="polarity_pairs", search=replace(config.search, batch_size=batch_size))


def test_the_run_form_starts_a_batched_run_whose_batches_run_one_after_another(manager):
    add_polarity_dataset(manager, n=12, paired=True)  # 24 claims, 12 groups of two
    at = open_page(manager, "run")
    at.selectbox(key="run.model").set_value("a local path…")
    at.text_input(key="run.model_path").set_value("fake")
    at.number_input(key="run.batch_size").set_value(8)
    at.number_input(key="run.k_init").set_value(4)
    at.button(key="FormSubmitter:run.form-Start").click().run()
    assert not at.exception and "Started run #1" in at.success[0].value
    assert "in batches of about 8 examples, one after another" in at.success[0].value
    assert manager.wait(1, timeout=60).state == "finished"
    runs = manager.store.runs()
    assert runs["name"].tolist() == ["run 1", "run 1 batch 1/3", "run 1 batch 2/3", "run 1 batch 3/3"]
    started = manager.store.events(2)["created_at"].max(), manager.store.events(3)["created_at"].min()
    assert started[0] <= started[1]  # one batch after another
    assert sorted(manager.store.labels(1)["example"]) == list(range(24))
    at.run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["State"] == "finished" and metrics["Batches done"] == "3 / 3"
    assert metrics["Labeled over the dataset"] == "24 / 24"
    assert at.button(key="run.control.step1").disabled  # a batched run steps through its batch runs
    options = at.selectbox(key="run.run").options
    assert options[0].startswith("#1 run 1") and "in batches of 8" in options[0]
    assert [o.split(" · ")[-1] for o in options[1:]] == [f"batch {k}/3 of run 1" for k in (1, 2, 3)]


class SlowLM(FakeLM):
    """The fake model, slow after its first `quick` queries: at a pace a page can pause between two steps
    (a quarter second a call: at 0.02 s the second batch finished before a loaded CI machine opened the page)."""

    quick = 0

    def label_logprobs(self, queries):
        if self.stats.model_calls > self.quick:
            time.sleep(0.25)
        return super().label_logprobs(queries)


def test_pause_and_resume_on_the_run_page_end_a_batched_run_as_one_never_paused(tmp_path):
    reference = RunManager(str(tmp_path / "reference.duckdb"), backend_factory=lambda m, p: FakeLM(strength=6))
    try:
        run_id = reference.start_run(add_polarity_dataset(reference, n=12, paired=True), batched_config())
        assert reference.wait(run_id, timeout=60).state == "finished"
        expected = reference.store.labels(run_id)[["example", "label"]].values.tolist()
        first_batch = int(reference.store.events(2)["model_calls"].sum())
    finally:
        reference.shutdown()
    model = SlowLM(strength=6)
    model.quick = first_batch + 5  # slow from a few queries into the second batch
    slow = RunManager(str(tmp_path / "slow.duckdb"), backend_factory=lambda m, p: model)
    try:
        parent = slow.start_run(add_polarity_dataset(slow, n=12, paired=True), batched_config())
        while model.stats.model_calls <= model.quick:
            time.sleep(0.01)
        at = open_page(slow, "run", parent)
        at.button(key="run.control.pause").click().run()
        assert slow.wait(parent, timeout=30).state == "paused"
        assert [slow.store.run(r)["status"] for r in (2, 3, 4)] == ["finished", "paused", "created"]
        at.run()
        assert {m.label: m.value for m in at.metric}["Batches done"] == "1 / 3"
        model.quick = 10**9  # full speed again
        at.button(key="run.control.resume").click().run()
        assert slow.wait(parent, timeout=60).state == "finished"
        assert slow.store.labels(parent)[["example", "label"]].values.tolist() == expected
    finally:
        slow.shutdown()


def test_live_home_and_export_show_a_batched_run_batch_by_batch_and_over_the_whole_dataset(manager):
    parent = manager.start_run(add_polarity_dataset(manager, n=12, paired=True), batched_config(), name="big")
    assert manager.wait(parent, timeout=60).state == "finished"
    live = open_page(manager, "live", parent)
    assert not live.exception and not plotly_titles(live)  # no search of its own
    assert {m.label: m.value for m in live.metric}["Batches done"] == "3 / 3"
    table = live.dataframe[0].value
    assert table["batch"].tolist() == ["1/3", "2/3", "3/3"] and table["labeled"].tolist() == [8, 8, 8]
    live.selectbox(key="live.run").set_value(3).run()  # a batch run opens like any run, its charts with it
    assert plotly_titles(live)[0] == "Search"
    shown = {m.label: m.value for m in live.metric}
    assert shown["Labeled"] == "8 / 8" and shown["Excluded"] == "0"  # the other batches were never in its search
    assert plotly_titles(live)[-1].startswith("Flip raster")
    assert len(json.loads(live.get("plotly_chart")[-1].proto.spec)["data"][0]["y"]) == 8  # its own examples
    home = open_page(manager, "home")
    runs = home.dataframe[0].value
    assert runs["run"].tolist() == [1, 2, 3, 4] and runs["batch"].tolist() == ["", "1/3 of run 1", "2/3 of run 1",
                                                                                "3/3 of run 1"]
    assert runs["labeled"].tolist() == ["24 of 24", "8 of 8", "8 of 8", "8 of 8"]
    export_page = open_page(manager, "export", parent)
    export_page.button(key="export.prepare").click().run()
    assert not export_page.exception
    frame = pd.read_csv(pd.io.common.BytesIO(export(manager.store, parent, "csv")))
    assert len(frame) == 24 and frame["label"].notna().all()
    assert export_page.dataframe[0].value["uid"].tolist() == frame["uid"].tolist()
    steer = open_page(manager, "steer", parent)
    assert "steer one of its batch runs" in steer.info[0].value


def test_a_label_pinned_in_a_batch_run_is_its_parents_label_at_once_and_resuming_the_parent_finishes_it(manager):
    parent = manager.start_run(add_polarity_dataset(manager, n=12, paired=True), batched_config())
    assert manager.wait(parent, timeout=60).state == "finished"
    child = manager.store.child_runs(parent)[1]
    example = int(manager.store.labels(child)["example"].iloc[0])
    before = int(manager.store.labels(parent).set_index("example").loc[example, "label"])
    steer = open_page(manager, "steer", child)
    steer.selectbox(key="steer.example").set_value(example)
    steer.radio(key="steer.action").set_value("Pin True" if before == 0 else "Pin False")
    steer.button(key="FormSubmitter:steer.example_form-Apply").click().run()
    assert manager.wait(child, timeout=30).state == "paused"  # a pin reopens a finished run, and with it the parent
    assert int(manager.store.labels(parent).set_index("example").loc[example, "label"]) == 1 - before
    assert manager.store.run(parent)["status"] == "paused"
    run_page = open_page(manager, "run", parent)
    run_page.button(key="run.control.resume").click().run()
    assert manager.wait(parent, timeout=60).state == "finished" and manager.status(child).state == "finished"
    assert int(manager.store.labels(parent).set_index("example").loc[example, "label"]) == 1 - before
