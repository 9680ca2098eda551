"""Fine-tuning on labels (learners/, runs/finetune.py, `icm finetune`, `icm predict`, `icm models`) on
a tiny test-built Llama: training lowers the loss, a saved head or adapter reloads to the same
predictions, and the commands go from a run's labels to labels of new data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from icm_engine import cli
from icm_engine.core.config import LearnerConfig, ModelConfig
from icm_engine.core.tasks import Example, load_task
from icm_engine.learners.saved import finetuned_root, list_trained
from icm_engine.runs.finetune import LabelSource, finetune, load_finetuned, make_learner
from icm_engine.runs.models import load_model
from tests.tiny_model import build_tiny_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = [("wonderful", 1), ("great", 1), ("fun", 1), ("moving", 1), ("dull", 0), ("boring", 0), ("waste", 0),
         ("weak", 0)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama")
    return path, load_model(ModelConfig(name=str(path)), progress=lambda *a: None)


def reviews(n: int):
    examples, labels = [], []
    for i in range(n):
        word, label = WORDS[i % len(WORDS)]
        examples.append(Example(f"r{i}", {"text": f"the movie was {word} {i}"}))
        labels.append(label)
    return examples, labels


@pytest.mark.parametrize("config", [LearnerConfig(learner="head", l2=0.01),
                                    LearnerConfig(learner="lora", lora_rank=4, learning_rate=5e-3, epochs=3,
                                                  batch_size=4)], ids=["head", "lora"])
def test_training_lowers_the_loss_and_the_saved_model_reloads_to_the_same_predictions(tiny, tmp_path, config):
    _, backend = tiny
    task = load_task("sentiment_single")
    examples, labels = reviews(16)
    source = LabelSource(None, None, task, examples, labels, {})
    steps = []
    provenance = finetune(tmp_path / "icm.duckdb", source, backend, config, progress=lambda d, t, m: steps.append((d, t)))
    curve = provenance["loss_curve"]
    assert len(curve) >= 2 and curve[-1] < curve[0], curve
    assert steps and steps[-1][0] == steps[-1][1], "progress reaches its total"
    assert provenance["n_labels"] == 16 and provenance["learner"]["learner"] == config.learner
    folder = finetuned_root(tmp_path / "icm.duckdb") / provenance["id"]
    assert (folder / "labels.csv").read_text().splitlines()[1] == "r0,1"

    learner = make_learner(backend, task, config)
    fresh = learner.fit(learner.prepare(examples), range(16), labels, seed=0)
    _, _, reloaded_learner, reloaded = load_finetuned(tmp_path / "icm.duckdb", provenance["id"], backend)
    prepared = reloaded_learner.prepare(examples)
    # The two fits read the features apart: the first forwarded the head's reading context, later reads
    # take it from the prefix store; float rounding, which a nearly free head (l2 0.01) amplifies a little.
    np.testing.assert_allclose(reloaded.label_logprobs(prepared, range(16)),
                               fresh.label_logprobs(prepared, range(16)), atol=1e-3)
    assert reloaded.context == fresh.context and len(reloaded.context) == (8 if config.learner == "head" else 0)
    trained_accuracy = (reloaded.label_logprobs(prepared, range(16)).argmax(1) == np.array(labels)).mean()
    assert trained_accuracy == pytest.approx(provenance["train_accuracy"])


def test_lora_leaves_the_backends_own_weights_untouched(tiny, tmp_path):
    _, backend = tiny
    before = {k: v.clone() for k, v in backend.model.state_dict().items()}
    task = load_task("sentiment_single")
    examples, labels = reviews(8)
    finetune(tmp_path / "db.duckdb", LabelSource(None, None, task, examples, labels, {}), backend,
             LearnerConfig(learner="lora", lora_rank=2, learning_rate=1e-2, epochs=1, batch_size=4))
    after = backend.model.state_dict()
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)


def test_finetune_predict_and_models_commands_from_a_run(tiny, tmp_path, capsys):
    path, _ = tiny
    data = tmp_path / "reviews.csv"
    examples, labels = reviews(12)
    data.write_text("text,gold\n" + "".join(f"{e.fields['text']},{y}\n" for e, y in zip(examples, labels)))
    db = str(tmp_path / "icm.duckdb")
    assert cli.main(["run", "--db", db, "--data", str(data), "--task", "sentiment_single", "--model", str(path),
                     "--steps", "6", "--stop", "steps", "--k-init", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["finetune", "--db", db, "--run", "1", "--learner", "head", "--head-l2", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "saved ft-1 (head)" in out and "training loss" in out
    assert cli.main(["models", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "ft-1" in listing and "head" in listing and "run 1's 12 labels" in listing
    provenance = json.loads((finetuned_root(db) / "ft-1" / "provenance.json").read_text())
    assert provenance["run_id"] == 1 and provenance["model"]["name"] == str(path)
    out_csv = tmp_path / "predicted.csv"
    assert cli.main(["predict", "--db", db, "--finetuned", "ft-1", "--data", str(data), "--out", str(out_csv)]) == 0
    rows = out_csv.read_text().splitlines()
    assert rows[0] == "uid,label,p_true" and len(rows) == 13
    assert "agreement with the data's gold" in capsys.readouterr().out
    assert len(list_trained(finetuned_root(db))) == 1


def test_unknown_finetuned_model_and_run_without_labels_get_one_line(tiny, tmp_path, capsys):
    path, _ = tiny
    db = str(tmp_path / "icm.duckdb")
    data = tmp_path / "reviews.csv"
    data.write_text("text\nfine\n")
    assert cli.main(["predict", "--db", db, "--finetuned", "ft-9", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("icm predict: no fine-tuned model 'ft-9'") and len(err.splitlines()) == 1


@pytest.mark.parametrize("kind,context", [("llama", False), ("gemma3", False), ("llama", True), ("gemma3", True)])
def test_reading_the_label_position_in_one_forward_equals_the_two_reads(tmp_path, kind, context):
    """The head learner's features and its prior come from one forward (TransformersLM.read_label_position):
    the same numbers as hidden_states and label_logprobs asked apart; with a reading context of
    demonstrations before each query, read through the prefix store (the context forwarded once) too."""
    from icm_engine.backends.base import LabelQuery, LanguageModel
    from tests.tiny_model import build_tiny_gemma3_dir

    build = build_tiny_model_dir if kind == "llama" else build_tiny_gemma3_dir
    lm = load_model(ModelConfig(name=str(build(tmp_path / kind))), progress=lambda *a: None)
    task = load_task("sentiment_single")
    examples, _ = reviews(7)
    prompts = [(task.render_query(e),) for e in examples]
    prompts[0] = (prompts[0][0] + " and a much longer review than the others, to pad every other row",)
    if context:
        demos = tuple(part for e, y in zip(examples[:3], (1, 0, 1)) for part in (task.render_query(e), task.render_label(y)))
        prompts = [demos + p for p in prompts]
        before = lm.stats.snapshot()
    states, raw = lm.read_label_position(prompts, [1], task.label_words)
    if context:  # the demonstrations were forwarded once, not once per prompt
        assert lm.stats.since(before).tokens_reused > 0
    apart_states, apart_raw = LanguageModel.read_label_position(lm, prompts, [1], task.label_words)
    np.testing.assert_allclose(states, apart_states, atol=1e-5)
    assert raw.shape == (7, 2)  # logits: the same log-odds, each row's vocabulary normalizer left out
    np.testing.assert_allclose(raw[:, 1] - raw[:, 0], apart_raw[:, 1] - apart_raw[:, 0], atol=1e-4)
    asked = lm.label_logprobs([LabelQuery(p, task.label_words) for p in prompts])
    np.testing.assert_allclose(raw[:, 1] - raw[:, 0], asked[:, 1] - asked[:, 0], atol=1e-4)


def test_export_page_fine_tunes_a_run_through_its_button_and_shows_the_loss_curve(tmp_path):
    """As a user would: pick the head learner, press Fine-tune, watch it finish, see the curve and the model listed."""
    import time

    from icm_engine.runs.manager import RunManager
    from tests.conftest import add_polarity_dataset, fake_run_config
    from tests.fakes import PolarityStates
    from tests.test_app_pages import open_page, plotly_titles

    manager = RunManager(str(tmp_path / "icm.duckdb"), backend_factory=lambda model, progress: PolarityStates(strength=0))
    try:
        run_id = manager.start_run(add_polarity_dataset(manager, n=16), fake_run_config(steps=20))
        assert manager.wait(run_id).state == "finished"
        at = open_page(manager, "export", run_id)
        at.selectbox(key="export.learner").set_value("head").run()
        at.button(key="export.finetune").click().run()
        assert not at.exception
        job = manager.finetunes.job(0)
        deadline = time.monotonic() + 60
        while job.state not in ("finished", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
        at.run()
        assert job.state == "finished", job.error
        assert any("Saved ft-1 (head)" in s.value for s in at.success)
        assert "Training loss (head)" in plotly_titles(at)
        listed = at.dataframe[-1].value
        assert listed["id"].tolist() == ["ft-1"] and int(listed["labels"].iloc[0]) == len(manager.store.labels(run_id))
    finally:
        manager.shutdown()


def test_the_head_reads_each_example_after_a_context_chosen_without_gold_and_new_data_after_the_same(tiny, monkeypatch):
    """The reading context: `context` distinct examples of the data, labeled by the model's own zero-shot
    reading and alternating; a context member is read without its own demonstration; a trained head
    reads new data after the very demonstrations it was trained with, and refuses inputs read otherwise."""
    _, backend = tiny
    task = load_task("sentiment_single")
    examples, labels = reviews(20)
    learner = make_learner(backend, task, LearnerConfig(learner="head", context=4))
    asked = []
    reading = backend.read_label_position
    monkeypatch.setattr(backend, "read_label_position", lambda prompts, *a: asked.extend(prompts) or reading(prompts, *a))
    prepared = learner.prepare(examples)
    context = prepared.extra["context"]
    queries = [task.render_query(e) for e in examples]
    assert len(context) == 4 and [y for _, y in context] == [0, 1, 0, 1]
    assert len({q for q, _ in context}) == 4 and all(q in queries for q, _ in context)
    read = {prompt[-1]: prompt[:-1] for prompt in asked[-len(examples):]}  # the last call: every example once
    full = tuple(part for q, y in context for part in (q, task.render_label(y)))
    for query, segments in read.items():
        member = query in {q for q, _ in context}
        assert len(segments) == len(full) - (2 if member else 0) and (member or segments == full)
        assert query not in segments  # no example is shown itself

    trained = learner.fit(prepared, range(20), labels)
    new, _ = reviews(26)
    fresh = learner.prepare(new[20:], context=trained.context)
    assert fresh.extra["context"] == trained.context
    assert trained.label_logprobs(fresh, range(6)).shape == (6, 2)
    with pytest.raises(ValueError, match="after its own 4 demonstrations"):
        trained.label_logprobs(learner.prepare(new[20:], context=[]), range(6))
