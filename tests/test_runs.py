"""Runs end to end through the store: one event per step, resume after SIGKILL, gold never read."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import RunConfig, SearchConfig
from icm_engine.runs.runner import advance, create_run, open_search
from icm_engine.store.database import Store
from tests.fakes import PAIRED, PrefixStoreLM, polarity_examples

ROOT = Path(__file__).resolve().parent.parent


def _trajectory(store, run_id):
    events = store.events(run_id)
    return list(zip(events["iteration"], events["example"].fillna(-1), events["proposed_label"].fillna(-1), events["accepted"]))


def _run_with(gold, steps=25, seed=7):
    examples, _ = polarity_examples(10, seed=2, paired=True)
    store = Store(":memory:")
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, gold)
    config = RunConfig(task=PAIRED.name, dataset="polarity", search=SearchConfig(seed=seed, steps=steps, k_init=4))
    backend = FakeLM(strength=6)
    run_id = create_run(store, dataset_id, config, backend)
    advance(store, run_id, open_search(store, run_id, backend))
    return store, run_id


def test_every_step_is_one_event_and_every_change_one_flip():
    store, run_id = _run_with(None)
    events = store.events(run_id)
    search_events = events[events["kind"].isin(["init", "propose"])]
    assert list(search_events["iteration"]) == list(range(26))
    assert list(events["kind"].iloc[26:]) in ([], ["final_pass"])
    flips = store.flips(run_id)
    accepted_changes = events[(events["kind"] == "propose") & events["accepted"] & (events["old_label"] != events["proposed_label"])]
    assert set(accepted_changes["iteration"]) <= set(flips[flips["cause"] == "proposal"]["iteration"])
    labels = store.labels(run_id)
    # replaying the flips reproduces the current labels exactly
    replay = {}
    for flip in flips.sort_values(["seq"]).itertuples(index=False):
        replay[int(flip.example)] = None if flip.new_label is None or flip.new_label != flip.new_label else int(flip.new_label)
    assert {k: v for k, v in replay.items() if v is not None} == dict(zip(labels["example"].astype(int), labels["label"].astype(int)))
    assert store.run(run_id)["status"] == "finished"
    assert json.loads(store.run(run_id)["config"] and json.dumps(store.run(run_id)["config"]))["search"]["seed"] == 7


def test_gold_labels_never_change_the_trajectory():
    examples, gold = polarity_examples(10, seed=2, paired=True)
    shuffled = dict(zip(gold, reversed(list(gold.values()))))
    inverted = {i: 1 - y for i, y in gold.items()}
    runs = [_run_with(g) for g in (gold, shuffled, inverted, None)]
    trajectories = [_trajectory(store, run_id) for store, run_id in runs]
    assert all(t == trajectories[0] for t in trajectories[1:])
    labels = [store.labels(run_id)[["example", "label"]].values.tolist() for store, run_id in runs]
    assert all(l == labels[0] for l in labels[1:])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


# One torch thread: the tiny model gains nothing from two, and two thrash on a busy 2-core machine.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _icm(*args, **kwargs):
    return [sys.executable, "-m", "icm_engine.cli", *args]


def test_report_summarizes_cost_and_audit():
    from icm_engine.evaluation.run_report import summarize_run

    store, run_id = _run_with(polarity_examples(10, seed=2, paired=True)[1])
    text = summarize_run(store, run_id)
    assert "iterations 25" in text and "cost per step" in text and "audit only" in text


def test_report_gives_the_prefix_stores_hit_rate_where_the_steps_recorded_it():
    import pandas as pd

    from icm_engine.evaluation.run_report import prefix_store_hits, prefix_store_summary, summarize_run

    examples, _ = polarity_examples(10, seed=2, paired=True)
    store = Store(":memory:")
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, None)
    config = RunConfig(task=PAIRED.name, dataset="polarity", search=SearchConfig(seed=7, steps=10, k_init=4))
    backend = PrefixStoreLM(strength=6)
    run_id = create_run(store, dataset_id, config, backend)
    advance(store, run_id, open_search(store, run_id, backend))
    hits = prefix_store_hits(store.events(run_id))
    assert (hits.reused, hits.forwarded) == (backend.stats.tokens_reused, backend.stats.tokens_forwarded)
    assert f"Prefix store: served {backend.stats.hit_rate:.0%} of the prompt tokens over the whole run" in summarize_run(store, run_id)
    # written before schema 6 (NULL), then 3 steps of 25% and 2 of 75%; no token at all says nothing
    events = pd.DataFrame({"tokens_reused": [None, 25, 25, 25, 75, 75], "tokens_forwarded": [9, 75, 75, 75, 25, 25]})
    assert prefix_store_hits(events.head(1)) is None and prefix_store_hits(events).steps == 5
    assert prefix_store_summary(events, recent=2) == ("Prefix store: served 45% of the prompt tokens over the 5 of its "
                                                      "6 steps that recorded it, 75% over the last 2 steps.")
    assert prefix_store_summary(events, recent=6) == ("Prefix store: served 45% of the prompt tokens over the 5 of its "
                                                      "6 steps that recorded it.")  # the window reaches older steps
    assert prefix_store_summary(events.assign(tokens_reused=0)) is None  # no store served anything: no line
    assert "Prefix store" not in summarize_run(*_run_with(None))  # the plain fake has no store


def test_prompting_baselines_use_gold_demos_from_other_groups_only():
    from icm_engine.evaluation.run_report import prompting_baselines

    class Recorder(FakeLM):
        def label_logprobs(self, queries):
            self.queries = getattr(self, "queries", []) + list(queries)
            return super().label_logprobs(queries)

    examples, gold = polarity_examples(10, seed=2, paired=True)
    store, run_id = _run_with(gold)
    backend = Recorder(strength=6)
    result = prompting_baselines(store, run_id, backend, shots=4)
    assert result["n"] == len(examples) and 0 <= result["zero_shot"] <= 1
    assert result["4_shot"  + "_gold"] >= 0.9  # the fake model reads polarity; gold demos orient it
    for query in backend.queries:
        target = query.segments[-1]
        demos = query.segments[:-1:2]
        target_text = next(e for e in examples if PAIRED.render_query(e) == target).fields["text"]
        assert all(target_text not in d for d in demos)  # neither the example nor its group-mate


def test_cli_finalize_labels_the_rest_and_resume_refuses_new_settings(tmp_path, tiny_model):
    db = tmp_path / "final.duckdb"
    started = subprocess.run(
        _icm("run", "--data", "sample:sentiment_yelp", "--limit", "12", "--db", str(db), "--model", str(tiny_model),
             "--steps", "3", "--seed", "1", "--k-init", "2", "--stop", "steps", "--no-final-pass"),
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert started.returncode == 0, started.stderr[-2000:]
    with Store(str(db)) as store:
        before = len(store.labels(1))
        assert store.run(1)["config"]["search"]["final_pass"] is False and before < 12
    refused = subprocess.run(_icm("run", "--resume", "1", "--db", str(db), "--alpha", "5"),
                             cwd=ROOT, capture_output=True, text=True, timeout=120, env=ENV)
    assert refused.returncode != 0 and "only --steps may change" in refused.stderr and "alpha" in refused.stderr
    nonsense = subprocess.run(_icm("run", "--db", str(db), "--alpha", "nan"), cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env=ENV)
    assert nonsense.returncode != 0 and "alpha must be a finite number" in nonsense.stderr
    finished = subprocess.run(_icm("finalize", "--run", "1", "--db", str(db), "--model", str(tiny_model)),
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"{12 - before} by the final pass" in finished.stdout
    with Store(str(db)) as store:
        assert len(store.labels(1)) == 12
        events = store.events(1)
        assert events["kind"].iloc[-1] == "final_pass" and store.run(1)["status"] == "finished"
        flips = store.flips(1)
        assert (flips["cause"] == "final_pass").sum() == 12 - before


def test_cli_resume_with_more_steps_continues_a_run_its_own_rule_had_stopped(tmp_path, tiny_model):
    db = tmp_path / "more.duckdb"
    first = subprocess.run(
        _icm("run", "--data", "sample:sentiment_yelp", "--limit", "6", "--db", str(db), "--model", str(tiny_model),
             "--seed", "1", "--k-init", "2", "--patience-sweeps", "0.5"),
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert first.returncode == 0, first.stderr[-2000:]
    with Store(str(db)) as store:
        stopped_at = int(store.run(1)["last_iteration"])
        assert len(store.labels(1)) == 6 and stopped_at < 400  # until labeled, then half a quiet sweep
    more = subprocess.run(_icm("run", "--resume", "1", "--db", str(db), "--steps", str(stopped_at + 5)),
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert more.returncode == 0, more.stderr[-2000:]
    with Store(str(db)) as store:
        assert int(store.run(1)["last_iteration"]) == stopped_at + 5
        assert any("extended by 5" in note for note in store.events(1)["note"])


@pytest.mark.parametrize("command", [["runs"], ["export", "--run", "1", "--out", "x.csv"], ["report", "--run", "1"],
                                     ["finalize", "--run", "1"], ["evals"]])
def test_commands_on_stored_runs_do_not_create_a_database_from_a_mistyped_path(tmp_path, command):
    missing = tmp_path / "typo.duckdb"
    result = subprocess.run(_icm(*command, "--db", str(missing)), cwd=ROOT, capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode != 0 and "no such database" in result.stderr and not missing.exists()


def test_a_row_no_prompt_can_hold_is_refused_when_data_meets_the_model(tmp_path, tiny_model):
    """Found before anything is stored (the tiny model's window is 512 tokens), not as a failed run."""
    table = tmp_path / "long.csv"
    table.write_text("text,gold\nShort and sweet.,1\n" + '"' + "word " * 2000 + '",0\n')
    db = tmp_path / "long.duckdb"
    refused = subprocess.run(_icm("run", "--data", str(table), "--task", "sentiment_single", "--db", str(db),
                                  "--model", str(tiny_model)), cwd=ROOT, capture_output=True, text=True, timeout=300, env=ENV)
    assert refused.returncode == 2, refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"icm: {table}: row 2 (id 'long-00002') needs ") and "context window is 512" in last
    assert not db.exists()  # the database is made only once the data has met the model
