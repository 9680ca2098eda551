"""Every page of the studio under AppTest, on a temporary DuckDB with the fake model (no weights)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from icm_engine.runs.export import export
from tests.conftest import add_polarity_dataset, fake_run_config

ENTRY = Path(__file__).resolve().parent.parent / "app" / "studio.py"
TIMEOUT = 30


def page_script(manager, name):
    """AppTest runs this function's body as the script: one page, given the test's manager."""
    import importlib

    module = importlib.import_module(f"app.pages.{name}")
    getattr(module, f"render_{name}")(manager)


def open_page(manager, name: str, run_id: int | None = None) -> AppTest:
    at = AppTest.from_function(page_script, args=(manager, name), default_timeout=TIMEOUT)
    if run_id is not None:
        at.session_state["studio.run_id"] = run_id
    return at.run()


def plotly_titles(at: AppTest) -> list[str]:
    charts = at.get("plotly_chart")
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in charts]


def finished_run(manager, steps: int = 12, **search) -> int:
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=steps, **search))
    assert manager.wait(run_id).state == "finished"
    return run_id


def test_the_app_opens_on_home_which_points_to_the_next_step(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_STUDIO_DB", str(tmp_path / "home.duckdb"))
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT).run()
    try:
        assert not at.exception
        assert at.title[0].value == "ICM Studio"
        assert "Next: load data on the **Data** page" in at.info[0].value
        assert any("home.duckdb" in c.value for c in at.caption)
    finally:
        from app.services import get_manager

        get_manager.clear()  # on_release shuts the manager down and frees the database file


def test_data_page_loads_a_bundled_sample_with_a_limit(manager):
    at = open_page(manager, "data")
    at.selectbox(key="data.sample").set_value("sentiment_yelp")
    at.number_input(key="data.sample.limit").set_value(5)
    at.button(key="data.sample.load").click().run()
    assert not at.exception and not at.error
    assert "Loaded dataset #1" in at.success[0].value
    stored = manager.store.datasets()
    assert stored["n_examples"].tolist() == [5]  # 5 sentences, one claim each: the sample opens as single claims
    assert stored["has_gold"].tolist() == [True]


def test_data_page_names_the_row_and_column_of_a_bad_upload_and_stores_nothing(manager):
    at = open_page(manager, "data")
    at.radio(key="data.source").set_value("Upload a table").run()
    table = b"id,text,gold\na,good food,1\nb,,0\nc,bad food,0\n"
    at.file_uploader(key="data.upload").set_value(("reviews.csv", table, "text/csv")).run()
    assert at.selectbox(key="data.upload.task").value == "sentiment_single"
    at.button(key="data.upload.load").click().run()
    assert "Nothing was loaded" in at.error[0].value
    assert at.error[0].value == "Nothing was loaded from reviews.csv: line 3, column 'text': empty value"
    assert len(manager.store.datasets()) == 0


def test_data_page_maps_columns_of_an_upload_and_a_custom_task(manager):
    rows = [{"review": t, "truth": g, "rid": f"x{k}"} for k, (t, g) in enumerate([("great food", 1), ("awful", 0)])]
    at = open_page(manager, "data")
    at.radio(key="data.source").set_value("Upload a table").run()
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    at.file_uploader(key="data.upload").set_value(("reviews.jsonl", data, "application/jsonl")).run()
    at.selectbox(key="data.upload.task").set_value("custom…").run()
    at.text_area(key="data.custom.template").set_value("Text: {body}\nGood?").run()
    at.selectbox(key="data.map.body").set_value("review")
    at.selectbox(key="data.map.id").set_value("rid")
    at.selectbox(key="data.map.gold").set_value("truth").run()
    at.button(key="data.upload.load").click().run()
    assert not at.error, at.error[0].value
    dataset_id = int(manager.store.datasets()["dataset_id"].iloc[0])
    assert manager.store.dataset_task(dataset_id)["template"] == "Text: {body}\nGood?"
    assert [e.uid for e in manager.store.load_examples(dataset_id)] == ["x0", "x1"]
    assert manager.store.load_gold(dataset_id) == {0: 1, 1: 0}


def test_a_large_upload_loads_whole_and_the_run_form_opens_on_the_scalable_algorithm(manager):
    """Over LARGE_DATASET rows the Data page advises the scalable search and loads every row by default;
    the Run form, opening on that dataset, starts at Algorithm: scalable (an in-context search would take hours)."""
    from app.readers import LARGE_DATASET

    rows = [{"text": f"review number {k} was {'great' if k % 2 else 'awful'}", "label": k % 2} for k in range(LARGE_DATASET + 100)]
    at = open_page(manager, "data")
    at.radio(key="data.source").set_value("Upload a table").run()
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    at.file_uploader(key="data.upload").set_value(("reviews.jsonl", data, "application/jsonl")).run()
    assert any("pick the scalable algorithm" in i.value for i in at.info), [i.value for i in at.info]
    at.selectbox(key="data.upload.task").set_value("sentiment_single").run()
    assert at.number_input(key="data.upload.limit").value == 0
    at.button(key="data.upload.load").click().run()
    assert not at.error, at.error[0].value
    assert int(manager.store.datasets()["n_examples"].iloc[0]) == LARGE_DATASET + 100
    run_page = open_page(manager, "run")
    assert run_page.selectbox(key="run.algorithm").value == "scalable"


def test_run_page_starts_a_run_in_the_background_and_steps_it(manager):
    add_polarity_dataset(manager)
    at = open_page(manager, "run")
    at.selectbox(key="run.model").set_value("a local path…")
    at.text_input(key="run.model_path").set_value("fake")
    at.number_input(key="run.steps").set_value(30)
    at.number_input(key="run.k_init").set_value(4)
    started = time.perf_counter()
    at.button(key="FormSubmitter:run.form-Start").click().run()
    assert time.perf_counter() - started < 5  # the page does not wait for the search
    assert not at.exception and "Started run #1" in at.success[0].value
    assert manager.wait(1).state == "finished"
    at.run()
    assert at.metric[0].value == "finished"
    run = manager.store.run(1)
    assert run["config"]["search"]["steps"] == 30 and run["config"]["model"]["name"] == "fake"
    assert at.button(key="run.control.step1").disabled  # nothing left to step


def test_run_page_controls_pause_step_and_resume(manager):
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=40), run=False)
    manager.wait(run_id)
    at = open_page(manager, "run", run_id)
    at.button(key="run.control.step10").click().run()
    assert manager.wait(run_id).iteration == 9
    at.button(key="run.control.step1").click().run()
    assert manager.wait(run_id).iteration == 10
    at.button(key="run.control.resume").click().run()
    assert manager.wait(run_id).state == "finished"
    at.run()
    assert at.metric[1].value == "40 / 40"


def test_live_page_draws_the_search_and_the_flip_raster(manager):
    run_id = finished_run(manager)
    manager.pin(run_id, 2, 1).result(timeout=5)
    at = open_page(manager, "live", run_id)
    assert not at.exception
    titles = plotly_titles(at)
    assert titles[0] == "Search" and any(t.startswith("Flip raster") for t in titles)
    assert "Agreement with gold (audit only: never used by the search)" in titles
    assert any("Acceptance" in t for t in titles) and any("balance" in t for t in titles)
    assert at.expander  # the steering events list


def test_live_page_has_no_gold_chart_without_gold(manager):
    examples = manager.store.load_examples(add_polarity_dataset(manager))
    from tests.fakes import SINGLE

    dataset_id = manager.store.add_dataset("nogold", SINGLE.to_dict(), examples, None)
    run_id = manager.start_run(dataset_id, fake_run_config(steps=5))
    manager.wait(run_id)
    titles = plotly_titles(open_page(manager, "live", run_id))
    assert not any("gold" in t for t in titles)


def test_live_page_shows_the_stored_hit_rate_of_a_run_this_studio_did_not_run(tmp_path):
    """A run written by another process (as `icm run` does) with a prefix store: its steps' reused tokens
    are read from the file, picked in the page's run picker; the plain fake's run shows no such line."""
    from icm_engine.core.config import RunConfig, SearchConfig
    from icm_engine.evaluation.run_report import prefix_store_hits
    from icm_engine.runs.manager import RunManager
    from icm_engine.runs.runner import advance, create_run, open_search
    from icm_engine.store.database import Store
    from tests.conftest import fake_backend_factory
    from tests.fakes import SINGLE, PrefixStoreLM, polarity_examples

    path = str(tmp_path / "cli.duckdb")
    with Store(path) as store:
        examples, gold = polarity_examples(12, seed=1)
        dataset_id = store.add_dataset(SINGLE.name, SINGLE.to_dict(), examples, gold)
        config = RunConfig(task=SINGLE.name, dataset="test", search=SearchConfig(steps=60, k_init=4, seed=0))
        with_store = create_run(store, dataset_id, config, PrefixStoreLM(strength=6))
        advance(store, with_store, open_search(store, with_store, backend := PrefixStoreLM(strength=6)))
        whole, recent = prefix_store_hits(store.events(with_store)), prefix_store_hits(store.events(with_store), 50)
    manager = RunManager(path, backend_factory=fake_backend_factory)
    try:
        plain = finished_run(manager)
        at = open_page(manager, "live")
        assert at.selectbox(key="live.run").value == plain and not any("Prefix store" in c.value for c in at.caption)
        at = at.selectbox(key="live.run").select(with_store).run()
        assert not at.exception
        assert f"Prefix store: served {whole.rate:.0%} of the prompt tokens over the whole run ({whole.steps} steps), " \
               f"{recent.rate:.0%} over the last 50 steps." in [c.value for c in at.caption]
        assert whole.reused == backend.stats.tokens_reused > 0 and whole.steps > 50
    finally:
        manager.shutdown()


def test_audit_page_explains_an_examples_labels(manager):
    run_id = finished_run(manager, steps=20, icl_folds=0)  # leave-one-out: every other label in the prompt
    labels = manager.store.labels(run_id)
    example = int(labels["example"].iloc[0])
    at = open_page(manager, "audit", run_id)
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 12 and {"label", "confidence", "flips", "pinned"} <= set(table.columns)
    at.selectbox(key="audit.example").set_value(example).run()
    history = at.dataframe[1].value
    assert history["why"].iloc[0].startswith("random initial label")  # position 0: labeled at initialization
    prompt = at.code[-1].value  # the prompt now; the first is the one before the chosen change
    text = manager.store.load_examples(manager.store.run(run_id)["dataset_id"])[example].fields["text"]
    assert prompt.endswith(f"Review: {text}\nPositive?")
    assert prompt.count("Positive?") == len(labels)  # every other labeled example, then the query
    at.checkbox(key="audit.pinned").check().run()
    assert len(at.dataframe[0].value) == 0  # nothing pinned in this run


def test_audit_shows_the_prompt_of_an_in_context_fold_with_the_other_folds_labels_only(manager):
    run_id = finished_run(manager, steps=20, icl_folds=3)
    labels = manager.store.labels(run_id)
    example = int(labels["example"].iloc[0])
    at = open_page(manager, "audit", run_id)
    at.selectbox(key="audit.example").set_value(example).run()
    assert not at.exception
    shown = [int(e) for e in labels["example"] if int(e) % 3 != example % 3]
    assert at.code[-1].value.count("Positive?") == len(shown) + 1  # the other folds' labels, then the query
    assert any(f"fold {example % 3 + 1} of 3" in m.value for m in at.markdown)


def test_steer_page_pins_a_label_and_records_the_event(manager):
    run_id = finished_run(manager)
    at = open_page(manager, "steer", run_id)
    at.selectbox(key="steer.example").set_value(5)
    at.radio(key="steer.action").set_value("Pin False")
    at.button(key="FormSubmitter:steer.example_form-Apply").click().run()
    assert not at.error and "recorded as a 'pin' event" in at.success[0].value
    events = manager.store.events(run_id)
    assert events["kind"].iloc[-1] == "pin" and int(events["example"].iloc[-1]) == 5
    assert at.dataframe[0].value["text"].iloc[-1].startswith("pin r5 = False")
    at.number_input(key="steer.alpha").set_value(3.0)
    at.button(key="FormSubmitter:steer.params_form-Apply parameters").click().run()
    assert manager.store.load_snapshot(run_id).alpha == 3.0


def test_an_alpha_set_on_the_steer_page_is_a_parameter_row_that_replay_redoes(manager):
    """A steering change walked end to end: the Steer page's alpha box and its button, the run's
    worker (Steering.set_params), the param_changes row written with the event, the page's table
    read from that row, and a replay that sets alpha from the row and reproduces every step after."""
    from icm_engine.backends.fake import FakeLM
    from icm_engine.runs.replay import ReplayDiverged, replay

    run_id = finished_run(manager, steps=8, stop="steps")
    at = open_page(manager, "steer", run_id)
    at.number_input(key="steer.alpha").set_value(0.75)
    at.button(key="FormSubmitter:steer.params_form-Apply parameters").click().run()
    assert not at.exception and "recorded as a 'set_param' event" in at.success[0].value
    event = manager.store.events(run_id).iloc[-1]
    rows = manager.store.param_changes(run_id)
    assert rows[["seq", "iteration", "parameter", "old_value", "new_value"]].values.tolist() == [
        [event["seq"], event["iteration"], "alpha", 20.0, 0.75]]  # t0 was left as it was: not a change
    assert at.dataframe[0].value["text"].iloc[-1] == "set alpha=0.75 (was 20)"
    manager.extend(run_id, 4).result(timeout=10)  # steps under the new alpha: U after it depends on it
    assert manager.wait(run_id).iteration == 12
    search, report = replay(manager.store, run_id, FakeLM(strength=6))
    assert search.alpha == 0.75 and report.events == len(manager.store.events(run_id))
    assert "every decision and every score identical" in report.summary()
    manager.store._rows("UPDATE param_changes SET new_value = 0.5 WHERE seq = ?", [int(event["seq"])])
    with pytest.raises(ReplayDiverged, match="note is 'alpha=0.5' replayed, 'alpha=0.75' stored"):
        replay(manager.store, run_id, FakeLM(strength=6))  # alpha is set from the row, whatever the note says


def test_export_page_downloads_what_icm_export_writes(manager):
    run_id = finished_run(manager)
    at = open_page(manager, "export", run_id)
    assert "preference" not in at.radio(key="export.format").options
    at.button(key="export.prepare").click().run()
    assert not at.exception
    download = at.get("download_button")[0]
    assert "run1.csv" in download.proto.label
    frame = at.dataframe[0].value
    expected = pd.read_csv(pd.io.common.BytesIO(export(manager.store, run_id, "csv")))
    assert frame["uid"].tolist() == expected["uid"].head(50).tolist()
    at.radio(key="export.format").set_value("provenance").run()
    assert not at.get("download_button")  # a new format must be prepared again
    at.button(key="export.prepare").click().run()
    assert json.loads(at.code[0].value)["run_id"] == run_id


def test_compare_page_shows_two_runs_and_their_disagreements(manager):
    first = finished_run(manager)
    second = manager.start_run(manager.store.run(first)["dataset_id"], fake_run_config(steps=12, seed=3))
    manager.wait(second)
    at = open_page(manager, "compare", first)
    assert not at.exception and len(at.get("plotly_chart")) == 4
    assert at.selectbox(key="compare.a.run").value == first
    at.selectbox(key="compare.b.run").set_value(second).run()
    assert at.metric[0].label == "Agreement on examples labeled by both"
    table = at.dataframe[0].value
    a = manager.store.labels(first).set_index("example")["label"]
    b = manager.store.labels(second).set_index("example")["label"]
    both = a.index.intersection(b.index)
    assert len(table) == int((a[both] != b[both]).sum())


def test_eval_page_lists_evaluations_with_their_table(manager):
    at = open_page(manager, "eval")
    assert "No evaluations" in at.info[0].value
    rows = pd.DataFrame({"method": ["icm", "icm", "zero_shot"], "seed": [0, 1, 0], "accuracy": [0.8, 0.7, 0.5],
                         "accuracy_argmax": [0.6, 0.5, 0.5], "n_test": [10, 10, 10], "n_demos": [8, 8, 0]})
    manager.store.save_eval("demo", {"task": "truthfulqa", "decision_rule": "centered log-odds"}, rows)
    at.run()
    assert not at.exception
    summary = at.dataframe[0].value.set_index("method")
    assert summary.loc["icm", "mean"] == pytest.approx(0.75) and summary.loc["icm", "accuracy_argmax"] == pytest.approx(0.55)
    assert summary.loc["zero_shot", "name"] == "Zero-shot"
    assert at.dataframe[1].value["accuracy"].tolist() == [0.8, 0.7, 0.5]  # each seed
    assert any("centered log-odds" in c.value for c in at.caption)


@pytest.mark.parametrize("name", ["live", "audit", "steer", "export", "compare", "eval", "run"])
def test_pages_say_what_to_do_on_an_empty_database(manager, name):
    at = open_page(manager, name)
    assert not at.exception and (at.info or at.caption)


# -- the pure builders behind the charts ------------------------------------------------------

def _flips(rows):
    columns = ["seq", "ord", "iteration", "example", "old_label", "new_label", "cause", "partner"]
    return pd.DataFrame([dict(zip(columns, r)) for r in rows], columns=columns)


def test_label_matrix_replays_flips_including_exclusion():
    from app.readers import UNLABELED, gold_agreement_by_iteration, label_balance, label_matrix

    flips = _flips([(0, 0, 0, 0, None, 1, "initial", None), (0, 1, 0, 1, None, 0, "initial", None),
                    (2, 0, 2, 0, 1, 0, "proposal", None), (2, 1, 2, 2, None, 1, "fix", 0),
                    (3, 0, 3, 1, 0, None, "human", None)])
    matrix = label_matrix(flips, n_examples=3, last_iteration=4)
    assert matrix.loc[0].tolist() == [1, 1, 0, 0, 0]
    assert matrix.loc[1].tolist() == [0, 0, 0, UNLABELED, UNLABELED]  # excluded at iteration 3
    assert matrix.loc[2].tolist() == [UNLABELED, UNLABELED, 1, 1, 1]
    balance = label_balance(matrix)
    assert balance["labeled"].tolist() == [2, 2, 3, 2, 2] and balance["true"].tolist() == [1, 1, 1, 1, 1]
    agreement = gold_agreement_by_iteration(matrix, {0: 0, 1: 0, 2: 1})
    assert agreement["agreement"].tolist() == [0.5, 0.5, 1.0, 1.0, 1.0]
    assert gold_agreement_by_iteration(matrix, None) is None


def test_search_curves_keep_the_scores_of_d_after_a_rejected_proposal(manager):
    from app.readers import rolling_acceptance, search_curves, steering_marks

    run_id = finished_run(manager, steps=25)
    manager.pin(run_id, 0, 1).result(timeout=5)
    events = manager.store.events(run_id)
    curves = search_curves(events)
    assert curves["iteration"].tolist() == list(range(26))  # the pin is not a search step
    for row, event in zip(curves.itertuples(), events[events["kind"] != "pin"].itertuples()):
        kept = event.accepted and not pd.isna(event.u_after)  # a rejected proposal leaves D as it was
        assert row.u == (event.u_after if kept else event.u_before)
    assert rolling_acceptance(curves, 5)["acceptance"].between(0, 1).all()
    uids = [e.uid for e in manager.store.load_examples(manager.store.run(run_id)["dataset_id"])]
    marks = steering_marks(events, manager.store.param_changes(run_id), uids)
    assert marks["text"].tolist() == ["pin r0 = True"] and marks["alpha"].isna().all()


def test_flip_raster_subsamples_long_runs_but_keeps_the_last_iteration():
    from app.charts import MAX_RASTER_COLUMNS, flip_raster_figure, search_curves_figure
    from app.readers import label_matrix, search_curves

    flips = _flips([(0, 0, 0, 0, None, 1, "initial", None), (999, 0, 999, 0, 1, 0, "proposal", None)])
    figure = flip_raster_figure(label_matrix(flips, 2, 1000))
    x = list(figure.data[0].x)
    assert len(x) <= MAX_RASTER_COLUMNS + 1 and x[-1] == 1000
    assert search_curves_figure(search_curves(pd.DataFrame(columns=["kind"]))).data  # empty run: empty traces


def test_run_form_offers_the_objective_clock_and_stopping_rule_and_a_preset_fills_them(manager):
    add_polarity_dataset(manager)
    at = open_page(manager, "run")
    from icm_engine.core.config import SearchConfig

    defaults = SearchConfig()
    assert at.selectbox(key="run.objective").value == defaults.objective
    assert at.selectbox(key="run.stop").value == defaults.stop == "labeled"
    assert at.selectbox(key="run.preset").value == "default"  # the picker names what the form shows
    at.selectbox(key="run.preset").set_value("released_code").run()
    assert not at.exception
    assert at.selectbox(key="run.objective").value == "mean" and at.selectbox(key="run.clock").value == "accepted"
    assert at.number_input(key="run.alpha").value == 30.0 and at.checkbox(key="run.balanced_init").value
    at.selectbox(key="run.preset").set_value("paper").run()
    assert at.selectbox(key="run.objective").value == "sum" and at.selectbox(key="run.stop").value == "steps"
    at.selectbox(key="run.objective").set_value("chance")  # a preset's value stays editable
    at.selectbox(key="run.model").set_value("a local path…")
    at.text_input(key="run.model_path").set_value("fake")
    at.number_input(key="run.steps").set_value(8)
    at.number_input(key="run.k_init").set_value(4)
    at.button(key="FormSubmitter:run.form-Start").click().run()
    assert not at.exception
    manager.wait(1)
    search = manager.store.run(1)["config"]["search"]
    assert (search["objective"], search["alpha"], search["stop"], search["steps"]) == ("chance", 50.0, "steps", 8)


def test_run_page_labels_the_rest_and_continues_a_finished_run(manager):
    run_id = finished_run(manager, steps=4, stop="steps", final_pass=False)
    assert len(manager.store.labels(run_id)) < 12
    at = open_page(manager, "run", run_id)
    at.button(key="run.finalize").click().run()
    manager.wait(run_id, until=lambda s: not s.busy and s.labeled == 12)
    assert len(manager.store.labels(run_id)) == 12
    assert manager.store.events(run_id)["kind"].iloc[-1] == "final_pass"
    at.number_input(key="run.more_steps").set_value(5)
    at.button(key="run.extend").click().run()
    status = manager.wait(run_id)
    assert status.state == "finished" and status.iteration == 9
    assert manager.store.run(run_id)["config"]["search"]["steps"] == 9
    extension = manager.store.param_changes(run_id)
    assert extension[["seq", "parameter", "new_value"]].values.tolist() == [
        [4 + 1 + 1, "steps", 9.0], [4 + 1 + 1, "extended_until", 9.0]]
    assert extension["old_value"].iloc[0] == 4.0 and pd.isna(extension["old_value"].iloc[1])


def test_live_page_shows_coverage_and_says_when_the_search_stopped_growing(manager):
    # The paper's sum at a huge alpha and a cold start: every addition costs more than the temperature allows.
    run_id = finished_run(manager, steps=60, stop="steps", final_pass=False, objective="sum", calibration="none",
                          alpha=5000.0, t0=0.01, t_min=0.001)
    at = open_page(manager, "live", run_id)
    assert not at.exception
    labeled = len(manager.store.labels(run_id))
    assert labeled < 12
    assert at.metric[0].value == f"{labeled} / 12" and at.metric[1].value == str(12 - labeled)
    assert any("stopped growing" in w.value for w in at.warning)
    moving = finished_run(manager, steps=30)  # the defaults label everything: no such note
    at = open_page(manager, "live", moving)
    assert at.metric[0].value == "12 / 12" and not any("stopped growing" in w.value for w in at.warning)


def test_eval_page_shows_the_label_table_and_the_test_table(manager):
    from dataclasses import replace

    from icm_engine.backends.fake import FakeLM
    from icm_engine.evaluation.comparison import evaluate
    from tests.test_evaluation import CONFIG, dataset

    result = evaluate(dataset(), FakeLM(strength=6), replace(CONFIG, seeds=(0,)))
    result.save(manager.store, "fake")
    at = open_page(manager, "eval")
    assert not at.exception
    labels = at.dataframe[0].value.set_index("method")
    assert {"icm", "zero_shot_labels", "self_labels", "random_labels"} <= set(labels.index)
    assert (labels["coverage"] == 1.0).all()
    tests = at.dataframe[1].value.set_index("method")
    assert {"gold", "icm", "perturbed"} <= set(tests.index) and "accuracy_argmax" in tests
    assert [s.value for s in at.subheader][:2] == ["Labels: what each method would export, scored on the whole search split",
                                                    "Test: many-shot prompting with those labels as demonstrations"]


def test_picking_an_earlier_run_sticks_and_its_buttons_act_on_it(manager):
    first = finished_run(manager, steps=4, stop="steps")
    second = finished_run(manager, steps=4, stop="steps")
    at = open_page(manager, "run", second)
    at.selectbox(key="run.run").set_value(first).run()
    assert at.selectbox(key="run.run").value == first  # the choice survives the rerun it causes
    at.number_input(key="run.more_steps").set_value(3).run()
    assert at.selectbox(key="run.run").value == first
    at.button(key="run.extend").click().run()
    manager.wait(first)
    manager.wait(second)
    assert manager.store.run(first)["last_iteration"] == 7 and manager.store.run(second)["last_iteration"] == 4


def test_a_finished_run_cannot_be_stopped_and_is_not_listed_active(manager):
    run_id = finished_run(manager)
    assert manager.active_runs() == []  # its idle worker is no activity
    at = open_page(manager, "run", run_id)
    assert at.button(key="run.control.stop").disabled and at.button(key="run.control.step1").disabled
    assert any(c.value == f"Run #{run_id} is finished." for c in at.caption)
    manager.stop(run_id, timeout=10)  # what the button did before: the run must stay finished
    assert manager.store.run(run_id)["status"] == "finished"
    at.run()
    assert at.button(key="run.control.step1").disabled and at.button(key="run.control.resume").disabled


def test_the_run_picker_says_loading_while_the_model_loads(manager, monkeypatch):
    import threading

    release = threading.Event()
    factory = manager._factory

    def slow_factory(*args, **kwargs):
        release.wait(10)
        return factory(*args, **kwargs)

    monkeypatch.setattr(manager, "_factory", slow_factory)
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=3))
    try:
        at = open_page(manager, "run", run_id)
        assert manager.store.run(run_id)["status"] == "created"
        assert any(c.value == f"Run #{run_id} is loading." for c in at.caption)
        assert manager.active_runs() == [run_id]
        live = open_page(manager, "live", run_id)
        assert "the model is loading" in live.info[0].value and "None" not in " ".join(c.value for c in live.caption)
    finally:
        release.set()
    assert manager.wait(run_id).state == "finished"


def test_audit_marks_excluded_examples_and_shows_no_prompt_for_them(manager):
    run_id = finished_run(manager)
    manager.exclude(run_id, 3).result(timeout=10)
    at = open_page(manager, "audit", run_id)
    table = at.dataframe[0].value
    assert table.loc[table["example"] == 3, "label"].item() == "excluded"
    assert list(table.columns)[-1] == "text"  # the wide column last, so every flag stays on screen
    at.multiselect(key="audit.labels").select("excluded").run()
    assert at.dataframe[0].value["example"].tolist() == [3]
    at.selectbox(key="audit.example").set_value(3).run()
    assert any("Excluded from the search" in i.value for i in at.info)
    assert not any("sees for this example now" in m.value for m in at.markdown)


def test_compare_opens_on_two_different_runs(manager):
    first = finished_run(manager)
    second = manager.start_run(manager.store.run(first)["dataset_id"], fake_run_config(steps=12, seed=3))
    manager.wait(second)
    at = open_page(manager, "compare", second)  # the session's run is the newest
    assert not at.warning, at.warning[0].value
    assert at.selectbox(key="compare.a.run").value == second and at.selectbox(key="compare.b.run").value == first


def test_an_upload_matching_no_task_says_what_is_missing_and_waits_for_a_mapping(manager):
    at = open_page(manager, "data")
    at.radio(key="data.source").set_value("Upload a table").run()
    at.file_uploader(key="data.upload").set_value(("numbers.csv", b"foo,bar\n1,2\n3,4\n", "text/csv")).run()
    assert "No built-in task matches the columns of numbers.csv (foo, bar)" in at.warning[0].value
    assert "sentiment_single needs text" in at.warning[0].value
    assert at.selectbox(key="data.map.text").value is None  # not silently the first column
    assert at.button(key="data.upload.load").disabled
    at.selectbox(key="data.map.text").set_value("foo").run()
    assert not at.button(key="data.upload.load").disabled


def test_audit_shows_a_past_change_with_the_demonstrations_and_score_of_its_step(manager):
    import numpy as np

    run_id = finished_run(manager, steps=30, icl_folds=0)
    events, flips = manager.store.events(run_id), manager.store.flips(run_id)
    proposals = flips[(flips["cause"] == "proposal") & (flips["iteration"] > 1)]
    change = proposals.iloc[0]
    example, seq = int(change["example"]), int(change["seq"])
    at = open_page(manager, "audit", run_id)
    at.selectbox(key="audit.example").set_value(example).run()
    history = at.dataframe[1].value
    k = history.index[history["seq"] == seq][0]
    at.selectbox(key="audit.change").set_value(int(k)).run()
    step = events[events["seq"] == seq].iloc[0]
    logp = np.array(json.loads(step["proposal_logp_json"]))
    p_true = float(np.exp(logp[1] - np.logaddexp(logp[0], logp[1])))
    assert abs(history.loc[k, "P(True) then"] - p_true) < 1e-9
    labeled_before = int(events[events["seq"] == seq - 1]["labeled_count"].iloc[0])
    demos = labeled_before - (1 if pd.notna(change["old_label"]) else 0)  # not itself
    past = at.code[0].value
    assert past.count("Positive?") == demos + 1  # the demonstrations then, and the query
    assert f"{demos} demonstrations" in at.expander[0].label and f"{p_true:.3f}" in at.expander[0].label


def test_home_lists_runs_with_state_and_coverage(manager):
    done = finished_run(manager, steps=4, stop="steps", final_pass=False)
    at = open_page(manager, "home")
    table = at.dataframe[0].value
    labeled = len(manager.store.labels(done))
    assert table["run"].tolist() == [done] and table["state"].tolist() == ["finished"]
    assert table["labeled"].tolist() == [f"{labeled} of 12"] and abs(table["coverage"].iloc[0] - labeled / 12) < 1e-9
    assert "audit the newest run" in at.info[0].value


def test_charts_tell_excluded_from_unlabeled_name_64_examples_and_mark_an_alpha_change(manager):
    from app import charts, readers

    run_id = finished_run(manager, steps=10)
    manager.exclude(run_id, 2).result(timeout=10)
    manager.set_params(run_id, alpha=3.0).result(timeout=10)
    events, flips = manager.store.events(run_id), manager.store.flips(run_id)
    matrix = readers.label_matrix(flips, 12)
    excluded = readers.exclusion_matrix(events, 12, matrix.columns)
    figure = charts.flip_raster_figure(matrix, [f"r{i}" for i in range(12)], excluded)
    z = np.array(figure.data[0].z)
    assert z[2, -1] == charts.EXCLUDED and (z[:, -1] != charts.EXCLUDED).sum() == 11
    assert "excluded" in figure.data[0].text[2][-1]
    wide = readers.label_matrix(flips.assign(example=flips["example"]), 64)
    names = charts.flip_raster_figure(wide, [f"e{i}" for i in range(64)]).layout.yaxis
    assert names.showticklabels and len(names.tickvals) == 64
    balance = charts.labeled_figure(readers.label_balance(matrix))
    assert max(balance.layout.yaxis2.tickvals) == 1
    marks = readers.steering_marks(events, manager.store.param_changes(run_id))
    assert marks["text"].tolist()[-1] == "set alpha=3 (was 20)" and marks["alpha"].tolist()[-1] == 3.0
    curves = charts.search_curves_figure(readers.search_curves(events), marks)
    assert [a.text for a in curves.layout.annotations if "rescaled" in a.text] == ["alpha=3: U rescaled"]


def test_audit_example_picker_follows_the_chosen_sort(manager):
    run_id = finished_run(manager, steps=30)
    at = open_page(manager, "audit", run_id)
    at.selectbox(key="audit.sort").set_value("flips").run()
    top = int(at.dataframe[0].value["example"].iloc[0])
    assert at.selectbox(key="audit.example").value == top
    assert at.selectbox(key="audit.example").options[0].startswith(manager.store.load_examples(1)[top].uid)


def test_steer_shows_a_pinned_example_as_pinned(manager):
    run_id = finished_run(manager, steps=3, stop="steps", final_pass=False)
    unlabeled = sorted(set(range(12)) - set(manager.store.labels(run_id)["example"].astype(int)))[0]
    at = open_page(manager, "steer", run_id)
    at.selectbox(key="steer.example").set_value(unlabeled)
    at.radio(key="steer.action").set_value("Pin True")
    at.button(key="FormSubmitter:steer.example_form-Apply").click().run()
    assert "recorded as a 'pin' event" in at.success[0].value
    at.run()
    assert at.selectbox(key="steer.example").value == unlabeled  # the choice stays on the example acted on
    assert any(c.value.startswith("Now: True (pinned)") for c in at.caption)


def test_a_run_that_fails_on_bad_input_shows_the_message_without_a_traceback(manager):
    config = fake_run_config()
    config = type(config).from_dict({**config.to_dict(), "model": {"name": "broken"}})
    run_id = manager.start_run(add_polarity_dataset(manager), config)
    assert manager.wait(run_id).state == "failed"
    at = open_page(manager, "run", run_id)
    assert not at.exception
    assert [e.value for e in at.error] == ["Run failed: test factory has no model 'broken'"]
    assert not [x for x in at.expander if "bug report" in x.label]  # the message is the whole answer
