"""A dataset as batches, the released code's way (runs/batches.py): the plan keeps consistency groups
whole and fits the context, a batched run labels every example over its parent, a parent stopped
mid-batch ends as one never stopped, and `icm run --batch-size` / `icm export` work on the parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import RunConfig, SearchConfig
from icm_engine.core.prompts import Prompts
from icm_engine.runs.batches import (
    advance_batches, batch_positions, batch_table, create_batched_run, members, plan_batches,
)
from icm_engine.runs.export import export, labeled_frame
from icm_engine.runs.runner import open_search
from icm_engine.store.database import Store
from tests.fakes import PAIRED, polarity_examples

ROOT = Path(__file__).resolve().parent.parent
COST_COLUMNS = ["created_at", "seconds", "model_calls", "tokens_forwarded", "tokens_reused"]


def batched(gold="gold", batch_size=6, seed=3, n=10):
    examples, truth = polarity_examples(n, seed=2, paired=True)
    store = Store(":memory:")
    dataset_id = store.add_dataset("polarity", PAIRED.to_dict(), examples, truth if gold == "gold" else gold)
    config = RunConfig(task=PAIRED.name, dataset="polarity",
                       search=SearchConfig(seed=seed, steps=60, k_init=2, batch_size=batch_size))
    return store, create_batched_run(store, dataset_id, config, FakeLM(strength=6), name="big")


def test_the_plan_keeps_groups_whole_fills_batches_in_order_and_fits_the_context():
    examples, _ = polarity_examples(10, seed=2, paired=True)  # 10 groups of two claims
    plan = plan_batches(PAIRED, examples, FakeLM(), 5)
    assert plan == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    assert plan_batches(PAIRED, examples, FakeLM(), 6) == [list(range(k, min(k + 6, 20))) for k in range(0, 20, 6)]
    # a window that holds three claims with their labels: batches of one group, however large batch_size is
    prompts = Prompts(PAIRED, examples)
    cost = [FakeLM().count_tokens(prompts.query(i)) + FakeLM().count_tokens(prompts.answer(1)) for i in range(20)]
    window = cost[0] + cost[1] + cost[2] + 1
    small = FakeLM(context_window=window)
    plan = plan_batches(PAIRED, examples, small, 100)
    assert all(sum(cost[i] for i in batch) <= window - 1 for batch in plan)
    assert sorted(i for batch in plan for i in batch) == list(range(20))
    for batch in plan:  # no group is split
        groups = {examples[i].group for i in batch}
        assert all(examples[j].group not in groups for j in range(20) if j not in batch)
    assert plan == plan_batches(PAIRED, examples, small, 100)  # deterministic
    with pytest.raises(ValueError, match="group 'g0' .* does not fit the model's context window"):
        plan_batches(PAIRED, examples, FakeLM(context_window=cost[0] + 2), 100)


def test_a_groups_members_apart_in_the_data_still_share_a_batch():
    examples, _ = polarity_examples(4, seed=2, paired=True)
    shuffled = [examples[k] for k in (0, 2, 4, 6, 1, 3, 5, 7)]  # each group's second claim comes later
    plan = plan_batches(PAIRED, shuffled, FakeLM(), 4)
    assert plan == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_a_batched_run_labels_every_example_over_its_parent_each_batch_seeing_only_its_own():
    store, parent = batched()
    children = store.child_runs(parent)
    assert [store.run(c)["name"] for c in children] == [f"big batch {k}/4" for k in range(1, 5)]
    assert [store.run(c)["config"]["search"]["seed"] for c in children] == [3, 4, 5, 6]
    assert all(store.run(c)["config"]["search"]["batch_size"] == 0 for c in children)
    assert batch_positions(store.runs()) == {c: (k + 1, 4, parent) for k, c in enumerate(children)}
    heard = []
    assert advance_batches(store, parent, FakeLM(strength=6), on_batch_done=lambda *a: heard.append(a))
    assert heard == [(k + 1, 4, c) for k, c in enumerate(children)]
    assert store.run(parent)["status"] == "finished" and all(store.run(c)["status"] == "finished" for c in children)
    for child in children:
        own = set(members(store, child))
        events, flips = store.events(child), store.flips(child)
        assert set(events["example"].dropna().astype(int)) <= own and set(flips["example"].astype(int)) <= own
        assert set(store.labels(child)["example"]) == own
    labels = store.labels(parent)
    assert sorted(labels["example"]) == list(range(20))
    union = {int(e): int(y) for c in children for e, y in zip(store.labels(c)["example"], store.labels(c)["label"])}
    assert dict(zip(labels["example"].astype(int), labels["label"].astype(int))) == union
    assert [(r.examples, r.labeled, r.status) for r in batch_table(store, parent)] == [(6, 6, "finished")] * 3 + [
        (2, 2, "finished")]
    # export over the whole dataset: one row per example, labeled, sources as each batch's search set them
    frame = labeled_frame(store, parent)
    assert len(frame) == 20 and frame["label"].notna().all() and set(frame["source"]) <= {"search", "final_pass"}
    assert export(store, parent, "csv").decode().count("\n") == 21
    assert export(store, parent, "sft").decode().count("\n") == 20
    assert '"batch": "4/4"' in export(store, parent, "provenance").decode()
    with pytest.raises(ValueError, match="is a batched run"):
        open_search(store, parent, FakeLM())


def test_gold_never_changes_a_batched_runs_labels():
    examples, gold = polarity_examples(10, seed=2, paired=True)
    outcomes = []
    for truth in (gold, {i: 1 - y for i, y in gold.items()}, None):
        store, parent = batched(gold=truth)
        advance_batches(store, parent, FakeLM(strength=6))
        outcomes.append(store.labels(parent)[["example", "label", "position"]].values.tolist())
    assert outcomes[0] == outcomes[1] == outcomes[2]


def _rows(frame):
    return frame.astype(object).where(frame.notna(), None).values.tolist()  # NaN, which equals nothing, as None


def _history(store, parent):
    return {c: (_rows(store.events(c).drop(columns=COST_COLUMNS)), _rows(store.labels(c)))
            for c in store.child_runs(parent)} | {"parent": _rows(store.labels(parent))}


def test_a_parent_stopped_mid_batch_resumes_to_the_labels_of_one_never_stopped():
    reference, parent = batched()
    advance_batches(reference, parent, FakeLM(strength=6))
    store, parent = batched()
    second = store.child_runs(parent)[1]
    inside = members(store, second)[0]

    def interrupt(search, record):  # Ctrl-C after the fourth step of the second batch was stored
        if inside not in search.excluded and record.iteration >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        advance_batches(store, parent, FakeLM(strength=6), on_step=interrupt)
    assert store.run(parent)["status"] == "stopped" and store.run(second)["status"] == "stopped"
    assert 0 < store.run(second)["last_iteration"]
    assert advance_batches(store, parent, FakeLM(strength=6))  # a fresh model, as a new process has
    assert _history(store, parent) == _history(reference, parent)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_model import build_tiny_model_dir

    return str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


def _command(db, model, *args):
    return ["run", "--db", str(db), "--model", model, *args]


FRESH = ["--data", "sample:sentiment_yelp", "--task", "sentiment", "--limit", "8", "--batch-size", "4", "--seed", "5",
         "--k-init", "2", "--steps", "30", "--alpha", "5"]


def test_icm_run_batch_size_prints_each_batch_and_the_parent_exports_the_whole_dataset(tmp_path, tiny_model, capsys,
                                                                                       one_torch_thread):
    from icm_engine import cli

    db = tmp_path / "icm.duckdb"
    assert cli.main(_command(db, tiny_model, *FRESH)) == 0
    out = capsys.readouterr().out
    assert "run 1: 16 examples in 4 batches (runs 2-5), 0 finished" in out
    for k in range(1, 5):
        assert f"batch {k}/4: run {k + 1}, 4 examples" in out and f"batch {k}/4: run {k + 1} finished, 4 of 4 labeled" in out
    assert "run 1: 16 of 16 labeled over the whole dataset" in out and "run 1 finished: 16 of 16 examples" in out
    assert cli.main(["export", "--db", str(db), "--run", "1", "--out", str(tmp_path / "all.csv")]) == 0
    rows = (tmp_path / "all.csv").read_text().splitlines()
    assert len(rows) == 17 and not any(",unlabeled," in r for r in rows)
    assert cli.main(["report", "--db", str(db), "--run", "1"]) == 0
    assert "4 batches, 4 finished" in capsys.readouterr().out
    # iterative fine-tuning: batch 1's ICM labels train a head that labels batch 2, and so on
    out = tmp_path / "iterative.csv"
    assert cli.main(["finetune", "--db", str(db), "--run", "1", "--iterative", "--head-layer", "1", "--head-context",
                     "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for j in (1, 2, 3):
        assert (f"round {j}/3: trained on batches 1-{j} ({4 * j} labels), labeled batch {j + 1}/4 (4 examples, "
                in printed) and f"agreement with its ICM labels (run {j + 2}) " in printed
    assert "saved ft-1 (head): trained on batches 1-3 (12 labels)" in printed
    rows = pd.read_csv(out)
    assert len(rows) == 16 and rows["source"].tolist() == ["icm"] * 4 + [f"round {j}" for j in (1, 2, 3) for _ in range(4)]
    assert rows["icm_label"].notna().all() and rows["p_true"].isna().tolist() == [True] * 4 + [False] * 12
    assert cli.main(["models", "--db", str(db)]) == 0
    assert "iterative over 4 batches" in capsys.readouterr().out
    assert cli.main(["finetune", "--db", str(db), "--run", "2", "--iterative"]) == 2  # a batch run is no batched run
    assert "is not a batched run" in capsys.readouterr().err
    assert cli.main(["finalize", "--db", str(db), "--run", "1", "--model", tiny_model]) == 2  # one line, no traceback
    assert "run 1 is a batched run: its batch runs search" in capsys.readouterr().err
    # a parent continues its batches as started: a new step cap or a replay is for one batch run
    assert cli.main(_command(db, tiny_model, "--resume", "1", "--steps", "50")) == 2
    assert cli.main(["run", "--db", str(db), "--batch-size", "4", "--algorithm", "scalable"]) == 2
    err = capsys.readouterr().err
    assert "--replay and --steps apply to one batch run" in err and "batch_size splits the in-context search" in err


def test_a_parent_killed_mid_batch_resumes_to_the_labels_of_one_never_killed(tmp_path, tiny_model, one_torch_thread):
    """SIGKILL while the second batch runs, then `icm run --resume 1`: the same labels, batch by batch."""
    from icm_engine import cli

    assert cli.main(_command(tmp_path / "reference.duckdb", tiny_model, *FRESH)) == 0
    db = tmp_path / "killed.duckdb"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "icm_engine.cli", *_command(db, tiny_model, *FRESH),
                                "--print-steps"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith('{"run_id": 3, "iteration": 3'):  # the second batch, a few steps in
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        process.wait(timeout=120)
    with Store.existing(str(db)) as store:
        assert store.run(1)["status"] == "interrupted" and store.run(3)["status"] == "interrupted"
    assert cli.main(_command(db, tiny_model, "--resume", "1")) == 0
    with Store.existing(str(db)) as killed, Store.existing(str(tmp_path / "reference.duckdb")) as reference:
        for run_id in (1, 2, 3, 4, 5):
            assert killed.labels(run_id)[["example", "label"]].values.tolist() == \
                reference.labels(run_id)[["example", "label"]].values.tolist(), run_id
        assert killed.run(1)["status"] == "finished"


def test_iterative_fine_tuning_trains_on_batch_1_then_on_each_batch_its_model_labeled(tmp_path):
    from icm_engine.core.config import LearnerConfig
    from icm_engine.runs.finetune import finetuned_models
    from icm_engine.runs.iterative import batched_labels, iterative_finetune
    from tests.fakes import PolarityStates

    outcomes = []
    examples, gold = polarity_examples(10, seed=2, paired=True)
    for truth in (gold, None):  # gold is never read: the same rounds without it
        store, parent = batched(gold=truth)
        advance_batches(store, parent, FakeLM(strength=6))
        source = batched_labels(store, parent)
        heard = []
        provenance, labeling = iterative_finetune(tmp_path / f"{truth is None}.duckdb", source, PolarityStates(strength=1),
                                                  LearnerConfig(learner="head", layer=1, context=2),
                                                  on_round=heard.append)
        outcomes.append((labeling, [{k: v for k, v in r.items() if k != "final_loss"} for r in heard]))
        assert heard == provenance["rounds"] and len(heard) == 3
        assert [r["n_train"] for r in heard] == [6, 12, 18] and [r["labeled_batch"] for r in heard] == [2, 3, 4]
        assert [r["trained_on_runs"] for r in heard] == [store.child_runs(parent)[:j] for j in (1, 2, 3)]
        icm = {int(e): int(y) for e, y in zip(store.labels(parent)["example"], store.labels(parent)["label"])}
        for r, batch in zip(heard, source.batches[1:]):  # agreement with that batch's own ICM labels
            assert r["icm_agreement"] == pytest.approx(sum(labeling[i][0] == icm[i] for i in batch) / len(batch))
        assert sorted(labeling) == list(range(20))
        assert {labeling[i][1] for i in source.batches[0]} == {"icm"} and labeling[19][1] == "round 3"
        assert provenance["iterative"] and provenance["n_labels"] == 18
        assert [m["id"] for m in finetuned_models(tmp_path / f"{truth is None}.duckdb")] == ["ft-1"]
    assert outcomes[0] == outcomes[1]
    store, parent = batched(batch_size=100)  # one batch: nothing to iterate
    with pytest.raises(ValueError, match="iterating needs two or more"):
        batched_labels(store, parent)
