"""The CCS probe baseline (issue 15): it finds a direction that separates contrast pairs, its sign
follows the zero-shot labels, and a backend without hidden states says so instead of failing."""
from __future__ import annotations

import csv
import io
import json
import zlib

import numpy as np
import pytest

from icm_engine import cli
from icm_engine.cli import trust as trust_command
from icm_engine.evaluation import ccs, trust
from icm_engine.backends.base import HiddenStatesUnavailable, ModelInfo
from icm_engine.backends.fake import FakeLM, polarity
from icm_engine.evaluation.baseline_export import export_baseline, report_exports
from icm_engine.store.database import Store
from icm_engine.evaluation.trust_report import summary_lines, to_html
from tests.fakes import SINGLE, polarity_examples
from tests.test_server_backend import stub  # noqa: F401  (fixture)
from tests.test_trust import polarity_store, stored_run
from tests.tiny_model import build_tiny_model_dir

EPOCHS = 400  # enough for these small, well-separated problems; the default (the paper's 1000) is slower


def contrast_pairs(truth: np.ndarray, dim: int = 32, separation: float = 2.0, seed: int = 0):
    """Synthetic hidden states: a truth direction enters x+ and x- with opposite signs; a larger
    nuisance direction (the example's topic) enters both alike, and each side has its own offset
    (the appended word). Only the truth direction makes p(x+) = 1 - p(x-) and confident."""
    rng = np.random.default_rng(seed)
    signs = 2 * np.asarray(truth) - 1
    truth_direction, topic = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    shared = rng.normal(size=(len(truth), dim)) + np.outer(rng.normal(size=len(truth)) * 4, topic)
    positive = shared + separation * np.outer(signs, truth_direction) + 3.0 + 0.3 * rng.normal(size=shared.shape)
    negative = shared - separation * np.outer(signs, truth_direction) - 1.0 + 0.3 * rng.normal(size=shared.shape)
    return negative, positive


def test_the_probe_recovers_a_separating_direction_up_to_sign():
    truth = np.random.default_rng(1).integers(0, 2, size=80)
    negative, positive = contrast_pairs(truth)
    scores, loss, stability = ccs.fit_ccs(negative, positive, epochs=EPOCHS)
    accuracy = float(np.mean((scores > 0.5) == truth))
    assert stability > 0.95  # every restart finds the same direction
    assert max(accuracy, 1 - accuracy) >= 0.97 and loss < 0.15  # 0.25: p = 1/2 everywhere
    again = ccs.fit_ccs(negative, positive, epochs=EPOCHS).scores
    np.testing.assert_array_equal(scores, again)  # seeded
    # more restarts never end at a higher loss than fewer: the lowest is kept
    assert ccs.fit_ccs(negative, positive, restarts=10, epochs=50)[1] <= ccs.fit_ccs(negative, positive, restarts=1, epochs=50)[1]
    normalized = ccs.normalize_side(positive)
    np.testing.assert_allclose(normalized.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(normalized.std(axis=0), 1, atol=1e-9)


def test_with_more_dimensions_than_examples_and_no_concept_the_probe_is_unstable():
    rng = np.random.default_rng(3)
    negative, positive = rng.normal(size=(24, 200)), rng.normal(size=(24, 200))
    fits = [ccs.fit_ccs(negative, positive, epochs=EPOCHS, seed=seed) for seed in range(ccs.PROBE_SEEDS)]
    assert all(fit.loss < 0.05 for fit in fits)  # consistent and confident on noise: the loss cannot tell
    assert ccs.seed_stability([fit.scores for fit in fits]) < ccs.STABLE  # but probes from other seeds disagree
    truth = np.random.default_rng(1).integers(0, 2, size=80)
    planted = [ccs.fit_ccs(*contrast_pairs(truth), epochs=EPOCHS, seed=seed).scores for seed in range(3)]
    assert ccs.seed_stability(planted) > 0.95


def test_the_sign_follows_the_zero_shot_labels():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, size=80)
    scores = ccs.fit_ccs(*contrast_pairs(truth, seed=2), epochs=EPOCHS).scores
    noisy_zero_shot = np.where(rng.random(80) < 0.7, truth, 1 - truth)  # a weak reader, right 70% of the time
    oriented, flipped, agreement = ccs.resolve_sign(scores, noisy_zero_shot)
    assert np.mean((oriented > 0.5) == truth) >= 0.97 and 0.5 < agreement < 0.9
    assert flipped == (np.mean((scores > 0.5) == truth) < 0.5)
    mirrored, flipped_again, _ = ccs.resolve_sign(scores, 1 - noisy_zero_shot)  # an inverted reader inverts it
    assert np.mean((mirrored > 0.5) == truth) <= 0.03 and flipped_again != flipped
    np.testing.assert_array_equal(ccs.resolve_sign(scores, None)[0], scores)


class HiddenFakeLM(FakeLM):
    """The fake polarity model with synthetic hidden states: each prompt's state holds the
    polarity of its review times the sign of the appended word, plus per-text noise."""

    dim = 24

    @property
    def hidden_layer_count(self) -> int:
        return 6

    def hidden_states(self, prompts, layers):
        direction = np.random.default_rng(0).normal(size=self.dim)
        rows = []
        for query, word in prompts:
            noise = np.random.default_rng(zlib.crc32(query.encode())).normal(size=self.dim)
            sign = 1 if word.strip() == "True" else -1
            rows.append(noise + 2 * np.tanh(polarity(query)) * sign * direction + sign)
        return np.repeat(np.asarray(rows, dtype=np.float32)[None], len(layers), axis=0)


def test_diagnose_adds_the_ccs_baseline_and_exports_each_baselines_labels(tmp_path, monkeypatch, capsys):
    db = tmp_path / "icm.duckdb"
    with Store(str(db)) as store:
        examples, gold = polarity_examples(40, seed=3)
        dataset_id = store.add_dataset("polarity", SINGLE.to_dict(), examples, gold)
        run_id = stored_run(store, dataset_id, dict(gold))
        report = trust.diagnose(store, run_id, HiddenFakeLM(strength=6), seed_run_ids=[])
        assert report.ccs is not None and report.ccs.layer == ccs.default_layer(6) == 4
        matrix = report.baselines.set_index("labeling")
        assert matrix.loc["run", trust.CCS_BASELINE] == 1.0  # gold itself: the probe agrees, oriented by zero-shot
        assert report.ccs.zero_shot_agreement == 1.0
        assert any(line.startswith("CCS: CCS probe on the last token's hidden state after block 4 of 6")
                   for line in summary_lines(report))
        assert "after block 4 of 6" in to_html(report)
        files = report_exports(store, report)
        assert sorted(files) == [f"run-{run_id}-ccs-probe.csv", f"run-{run_id}-zero-shot-argmax.csv",
                                 f"run-{run_id}-zero-shot-centered.csv", f"run-{run_id}-zero-shot-contextual.csv"]
        rows = list(csv.DictReader(io.StringIO(files[f"run-{run_id}-ccs-probe.csv"].decode())))
        assert len(rows) == 40 and [int(r["label"]) for r in rows] == [gold[e] for e in range(40)]
        assert {r["source"] for r in rows} == {"CCS probe"} and all(0.5 < float(r["confidence"]) <= 1 for r in rows)
        sft = [json.loads(line) for line in export_baseline(store, run_id, "x", report.baseline_labels["CCS probe"],
                                                            fmt="sft").decode().splitlines()]
        assert sft[0]["prompt"] == SINGLE.render_query(examples[0]) and sft[0]["completion"] == " True"
    monkeypatch.setattr(trust_command, "load_backend", lambda model: HiddenFakeLM(strength=6))
    out = tmp_path / "baselines"
    assert cli.main(["trust", "--run", str(run_id), "--db", str(db), "--export-baselines", str(out),
                     "--baseline-format", "sft"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"run-{run_id}-ccs-probe.sft.jsonl",
                                                     f"run-{run_id}-zero-shot-argmax.sft.jsonl",
                                                     f"run-{run_id}-zero-shot-centered.sft.jsonl",
                                                     f"run-{run_id}-zero-shot-contextual.sft.jsonl"]
    assert "CCS: CCS probe" in capsys.readouterr().out
    assert cli.main(["trust", "--run", str(run_id), "--db", str(db), "--no-ccs"]) == 0
    assert "CCS" not in capsys.readouterr().out.split("review queue")[0]


def test_a_model_the_studio_shares_between_runs_passes_hidden_states_through():
    import threading

    from icm_engine.backends.shared import SharedBackend

    examples, gold = polarity_examples(20, seed=5)
    shared = SharedBackend(HiddenFakeLM(strength=6), threading.Lock())
    result = ccs.ccs_labels(shared, SINGLE, examples, [gold[e] for e in range(20)], epochs=EPOCHS)
    assert result.n_layers == 6 and np.mean(result.labels == np.array([gold[e] for e in range(20)])) == 1.0
    with pytest.raises(HiddenStatesUnavailable, match=r"fake-polarity \(FakeLM\) gives no hidden states"):
        ccs.ccs_labels(SharedBackend(FakeLM(), threading.Lock()), SINGLE, examples, None)


def test_without_hidden_states_the_report_says_ccs_unavailable_and_carries_on(stub):  # noqa: F811
    store, dataset_id, gold = polarity_store()
    run_id = stored_run(store, dataset_id, dict(gold))
    report = trust.diagnose(store, run_id, FakeLM(strength=6), seed_run_ids=[])
    assert report.ccs is None and "gives no hidden states" in report.ccs_unavailable
    assert any(n.startswith("CCS unavailable: fake-polarity") for n in report.notes)
    assert trust.CCS_BASELINE not in report.baselines["labeling"].tolist()
    assert report.polarity.verdict == "agrees"  # the other checks still stand
    assert "CCS unavailable: fake-polarity (FakeLM) gives no hidden states" in to_html(report)
    from icm_engine.backends.openai_server import connect

    server = connect(f"openai+{stub.url}::stub", progress=lambda *a: None)
    with pytest.raises(HiddenStatesUnavailable, match="inference server: its API returns token log-probabilities"):
        ccs.ccs_labels(server, SINGLE, polarity_examples(4)[0], None)
    server.close()


def test_hidden_states_of_the_tiny_model_are_batched_exactly_and_feed_the_probe(tmp_path, one_torch_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icm_engine.backends.transformers_backend import TransformersLM

    path = build_tiny_model_dir(tmp_path / "llama")
    lm = TransformersLM(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), ModelInfo("tiny"))
    examples, _ = polarity_examples(12, seed=4)
    prompts = [(SINGLE.render_query(e), word) for e in examples[:5] for word in SINGLE.label_words]
    prompts[0] = (prompts[0][0] + " a much longer review than the others, to pad every other row",) + prompts[0][1:]
    batched = lm.hidden_states(prompts, [0, 1, 2])
    assert batched.shape == (3, 10, 64) and batched.dtype == np.float32
    alone = np.stack([lm.hidden_states([p], [0, 1, 2])[:, 0] for p in prompts], axis=1)
    np.testing.assert_allclose(batched, alone, atol=1e-4)  # right padding changes nothing before it
    with pytest.raises(ValueError, match="outside 0..2"):
        lm.hidden_states(prompts, [3])
    result = ccs.ccs_labels(lm, SINGLE, examples, [e % 2 for e in range(12)], epochs=50)
    assert result.layer == 1 and result.n_layers == 2 and len(result.labels) == 12
    assert set(result.labels) <= {0, 1} and result.zero_shot_agreement >= 0.5
    np.testing.assert_array_equal(result.labels, ccs.ccs_labels(lm, SINGLE, examples, [e % 2 for e in range(12)],
                                                                epochs=50).labels)


def test_trust_page_shows_the_ccs_probe_and_downloads_a_baselines_labels(tmp_path):
    from icm_engine.runs.manager import RunManager
    from tests.conftest import add_polarity_dataset, fake_run_config
    from tests.test_app_pages import open_page

    manager = RunManager(str(tmp_path / "icm.duckdb"), backend_factory=lambda model, progress: HiddenFakeLM(strength=6))
    try:
        run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=12))
        assert manager.wait(run_id).state == "finished"
        at = open_page(manager, "trust", run_id)
        assert not at.exception
        assert any(m.value.startswith("CCS probe on the last token's hidden state after block 4 of 6") for m in at.markdown)
        assert at.selectbox(key="trust.export.baseline").options == [
            "zero-shot (centered)", "zero-shot (contextual)", "zero-shot (argmax)", "CCS probe"]
        at.selectbox(key="trust.export.baseline").set_value("CCS probe").run()
        assert not at.exception and not any("CCS unavailable" in c.value for c in at.caption)
    finally:
        manager.shutdown()


def test_labels_that_no_reading_of_the_model_backs_are_unconfirmed():
    store, dataset_id, gold = polarity_store(n=60)
    half = {e: y if e % 4 < 2 else 1 - y for e, y in gold.items()}  # agrees with the concept on exactly half
    unbacked = stored_run(store, dataset_id, half)
    report = trust.diagnose(store, unbacked, HiddenFakeLM(strength=6), seed_run_ids=[])
    assert report.polarity.verdict == "inconclusive"  # polarity alone said nothing was wrong
    assert report.support.supported_by == [] and report.support.readings["reading"].tolist() == [
        "zero-shot (centered)", trust.CCS_BASELINE]
    assert any(w.startswith("unconfirmed: none of the model's readings") for w in report.warnings)
    backed = trust.diagnose(store, stored_run(store, dataset_id, dict(gold), seed=1), HiddenFakeLM(strength=6),
                            seed_run_ids=[])
    assert backed.support.supported_by == ["zero-shot (centered)", trust.CCS_BASELINE]
    assert not any(w.startswith("unconfirmed") for w in backed.warnings)
    assert "backed by zero-shot (centered) and CCS probe" in summary_lines(backed)[2]
    # on 16 examples, 9 agreeing rule nothing out: too few to tell, not a warning
    few = {e: y if e < 9 else 1 - y for e, y in gold.items() if e < 16}
    check = trust.support_check(few, {"zero-shot (centered)": [gold[e] for e in range(60)]})
    assert not check.warnings and check.inconclusive[0].startswith("too few examples to tell: none of the model's")
    inverted = trust.diagnose(store, stored_run(store, dataset_id, {e: 1 - y for e, y in gold.items()}, seed=2),
                              FakeLM(strength=6), seed_run_ids=[])
    kinds = [w.split(":")[0] for w in inverted.warnings]
    assert "possibly inverted" in kinds and "unconfirmed" not in kinds  # the stronger finding alone


def test_readings_that_follow_the_same_group_as_the_run_do_not_confirm_it():
    """TruthfulQA on the bundled model: the run, zero-shot and CCS all label the question, not the claim."""
    from icm_engine.core.tasks import Example, Task

    grouped = Task(name="claims", template="Question: {question}\nClaim: {choice}\nTrue?", fields=("question", "choice"),
                   rule="none", group_field="question")
    rng = np.random.default_rng(6)
    words = ["good", "great", "bad", "awful"]  # the question carries the polarity the fake model reads
    examples = [Example(f"q{g}-c{c}", {"question": f"is it {words[g % 4]} {g}", "choice": f"answer {c} {g}"},
                        group=f"q{g}") for g in range(16) for c in range(4)]
    store = Store(":memory:")
    dataset_id = store.add_dataset("claims", grouped.to_dict(), examples, None)
    by_question = {e: int(examples[e].fields["question"].split()[2] in ("good", "great")) for e in range(64)}
    report = trust.diagnose(store, stored_run(store, dataset_id, by_question, margins={e: 2.0 for e in range(64)}),
                            FakeLM(strength=6), seed_run_ids=[], ccs=False)
    assert report.salience.group_feature == "its question (the other examples' share True)"
    assert report.polarity.verdict == "agrees"  # the model reads the question as the run does
    assert report.support.supported_by == [] and report.support.confounded["zero-shot (centered)"] == 1.0
    unconfirmed = [w for w in report.warnings if w.startswith("unconfirmed")]
    assert len(unconfirmed) == 1 and "follow the flagged group feature too (zero-shot (centered): AUROC 1.00)" in unconfirmed[0]
    assert "follows the flagged group feature too, AUROC 1.00" in summary_lines(report)[2]
