"""Trust diagnostics (issue 15): each check must fire on synthetic data built to trip it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icm_engine import cli
from icm_engine.cli import trust as trust_command

from icm_engine.backends.fake import FakeLM
from icm_engine.core.records import Flip, LabelState, SearchSnapshot, StepRecord
from icm_engine.core.tasks import Example
from icm_engine.evaluation import statistics, trust
from icm_engine.store.database import Store
from tests.conftest import add_polarity_dataset, fake_run_config
from tests.fakes import SINGLE, polarity_examples
from tests.test_app_pages import open_page


def stored_run(store: Store, dataset_id: int, labels: dict[int, int], seed: int = 0, margins=None, u: float = 1.0) -> int:
    """A finished run whose labels are exactly `labels`, written as one initialization step.
    margins: each example's log P(True) - log P(False) as the run scored it (0 when not given)."""
    run_id = store.create_run(dataset_id, fake_run_config(seed=seed).to_dict(), {"name": "fake"})
    margins = margins if margins is not None else {e: 0.0 for e in labels}
    flips = [Flip(e, None, y, "initial") for e, y in sorted(labels.items())]
    states = {e: LabelState(y, position, (-np.log1p(np.exp(margins[e])), -np.log1p(np.exp(-margins[e]))))
              for position, (e, y) in enumerate(sorted(labels.items()))}
    record = StepRecord(iteration=0, kind="init", flips=flips, accepted=True, labeled_count=len(labels))
    snapshot = SearchSnapshot(iteration=0, labels=states, excluded=set(), rng_state={}, next_position=len(labels),
                              alpha=20.0, t0=10.0, u=u)
    store.record_step(run_id, record, snapshot)
    store.set_status(run_id, "finished")
    return run_id


def polarity_store(n: int = 40):
    store = Store(":memory:")
    examples, gold = polarity_examples(n, seed=3)
    return store, store.add_dataset("polarity", SINGLE.to_dict(), examples, gold), gold


# -- statistics -----------------------------------------------------------------------------

def test_the_95_percent_wilson_interval_covers_the_true_accuracy_in_simulated_audits():
    rng = np.random.default_rng(15)
    covered = 0
    for _ in range(500):
        truth, n = rng.uniform(0.8, 0.9), int(rng.integers(30, 51))
        estimate = trust.accuracy_estimate(list(rng.random(n) < truth))
        covered += estimate.low <= truth <= estimate.high
    assert covered / 500 >= 0.93


def test_wilson_interval_stays_in_range_and_narrows_with_more_verdicts():
    assert statistics.wilson_interval(0, 0) == (0.0, 1.0)
    low, high = statistics.wilson_interval(10, 10)
    assert 0.6 < low < 1.0 and high == pytest.approx(1.0)
    assert np.diff(statistics.wilson_interval(80, 100)) < np.diff(statistics.wilson_interval(8, 10))
    assert trust.accuracy_estimate({3: True, 5: False}).describe().startswith("1 of 2 judged correct")


def test_auroc_by_ranks_and_kappa_match_hand_computed_values():
    assert statistics.auroc([1, 2, 3, 4], [0, 0, 1, 1]) == 1.0
    assert statistics.auroc([4, 3, 2, 1], [0, 0, 1, 1]) == 0.0
    assert statistics.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties: average ranks
    assert statistics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert np.isnan(statistics.auroc([1, 2], [1, 1]))
    assert statistics.cohens_kappa([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert statistics.cohens_kappa([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert abs(statistics.binomial_cdf(2, 10) - 56 / 1024) < 1e-12


def test_an_audit_sample_is_seeded_without_repeats_and_drawn_from_the_labeled_examples():
    labeled = list(range(0, 200, 2))
    sample = trust.audit_sample(labeled, 30, seed=4)
    assert sample == trust.audit_sample(labeled, 30, seed=4) != trust.audit_sample(labeled, 30, seed=5)
    assert len(set(sample)) == 30 and set(sample) <= set(labeled)
    assert sorted(trust.audit_sample([7, 3], 30)) == [3, 7]


# -- the checks fire ------------------------------------------------------------------------

def test_an_inverted_labeling_is_flagged_with_its_evidence_and_the_intended_one_is_not():
    store, dataset_id, gold = polarity_store()
    inverted = stored_run(store, dataset_id, {e: 1 - y for e, y in gold.items()})
    intended = stored_run(store, dataset_id, dict(gold), seed=1)
    model = FakeLM(strength=6)
    report = trust.diagnose(store, inverted, model, seed_run_ids=[])
    assert report.polarity.verdict == "possibly inverted"
    assert report.polarity.agreement == 0.0 and report.polarity.p_value < 1e-6
    assert len(report.polarity.disagreements) == 10  # the most confident contradictions, as evidence
    assert any(w.startswith("possibly inverted") for w in report.warnings)
    assert trust.diagnose(store, intended, model, seed_run_ids=[]).polarity.verdict == "agrees"
    matrix = trust.diagnose(store, inverted, model, seed_run_ids=[], self_labeling=True).baselines.set_index("labeling")
    assert matrix.loc["run", "zero-shot (centered)"] == 0.0 and matrix.loc["run", "run"] == 1.0
    assert matrix.loc["zero-shot (centered)", "self-labeling (centered)"] > 0.9
    # the two runs differ only by seed: compared, they are mirror images
    seeds = trust.diagnose(store, inverted, model).seeds
    assert seeds.run_ids == [inverted, intended] and seeds.pairs["kappa"].tolist() == [-1.0]
    assert any("mirror images" in w for w in seeds.warnings)


def test_polarity_within_chance_of_one_half_is_inconclusive():
    odds = np.linspace(-1, 1, 20)
    labels = {e: int(e % 2) for e in range(20)}
    check = trust.polarity_check(labels, odds, [str(e) for e in range(20)])
    assert check.verdict == "inconclusive" and check.threshold == pytest.approx(0.5 - 1 / np.sqrt(20))


def test_labels_that_follow_text_length_raise_a_salience_warning():
    store = Store(":memory:")
    rng = np.random.default_rng(0)
    neutral = ["food", "place", "table", "window", "menu", "street", "door", "chair"]
    examples = [Example(f"x{k}", {"text": " ".join(rng.choice(neutral, size=int(rng.integers(2, 12))))}) for k in range(60)]
    dataset_id = store.add_dataset("lengths", SINGLE.to_dict(), examples, None)
    lengths = np.array([len(e.fields["text"]) for e in examples])
    by_length = {e: int(lengths[e] > np.median(lengths)) for e in range(60)}
    weak_margins = {e: float(rng.normal(0.3 * (2 * y - 1), 1.0)) for e, y in by_length.items()}
    report = trust.diagnose(store, stored_run(store, dataset_id, by_length, margins=weak_margins))
    assert report.salience.features.iloc[0]["feature"] == "length (characters)"
    assert report.salience.features.iloc[0]["strength"] == 1.0
    assert any(w.startswith("salience: length (characters)") for w in report.warnings)
    coin = {e: int(y) for e, y in enumerate(rng.integers(0, 2, size=60))}
    control = trust.diagnose(store, stored_run(store, dataset_id, coin, seed=1, margins=weak_margins), seed_run_ids=[])
    assert not any("length" in w for w in control.warnings)
    assert "no model" in control.notes[0]


def test_seed_runs_that_label_independently_have_kappa_near_zero():
    store, dataset_id, _ = polarity_store(n=200)
    rng = np.random.default_rng(7)
    runs = [stored_run(store, dataset_id, {e: int(y) for e, y in enumerate(rng.integers(0, 2, size=200))},
                       seed=seed, u=float(seed)) for seed in range(3)]
    other_settings = store.create_run(dataset_id, fake_run_config(seed=9, alpha=1.0).to_dict(), {"name": "fake"})
    assert trust.seed_runs(store, runs[0]) == runs and other_settings not in trust.seed_runs(store, runs[0])
    seeds = trust.seed_agreement(store, runs, [str(e) for e in range(200)])
    assert len(seeds.pairs) == 3 and (seeds.pairs["kappa"].abs() < 0.2).all()
    assert (seeds.pairs["agreement"].between(0.35, 0.65)).all()
    assert seeds.final_u["u"].tolist() == [0.0, 1.0, 2.0]
    assert len(seeds.disagreements) > 100 and len(seeds.warnings) == 3
    # the review queue puts examples the seeds dispute first
    review = trust.diagnose(store, runs[0], seed_run_ids=runs).review
    assert review["seeds_disagree"].iloc[0] and not review["seeds_disagree"].iloc[-1]


def test_balance_replays_flips_and_reads_the_models_content_free_lean():
    flips = pd.DataFrame({"seq": [0, 0, 0, 1, 2], "ord": [0, 1, 2, 0, 0], "iteration": [0, 0, 0, 1, 2],
                          "example": [0, 1, 2, 1, 2], "old_label": [None, None, None, 1, 0],
                          "new_label": [1, 1, 0, 0, None]})
    shares = trust.label_share_by_iteration(flips, 3)
    assert shares["labeled"].tolist() == [3, 3, 2] and shares["true"].tolist() == [2, 1, 1]
    assert trust.content_free_p_true(FakeLM(bias=2.0), SINGLE) > 0.8
    assert abs(trust.content_free_p_true(FakeLM(), SINGLE) - 0.5) < 1e-9
    store, dataset_id, gold = polarity_store()
    all_true = stored_run(store, dataset_id, {e: 1 for e in gold})
    warnings = trust.diagnose(store, all_true, FakeLM(strength=6, bias=3.0)).balance.warnings
    assert any(w.startswith("one-sided") for w in warnings) and any("content-free prior" in w for w in warnings)


# -- the command and the page ---------------------------------------------------------------

def test_icm_trust_prints_the_checks_and_writes_a_self_contained_html_report(tmp_path, monkeypatch, capsys):
    db = tmp_path / "icm.duckdb"
    with Store(str(db)) as store:
        examples, gold = polarity_examples(20, seed=3)
        dataset_id = store.add_dataset("polarity", SINGLE.to_dict(), examples, gold)
        run_id = stored_run(store, dataset_id, {e: 1 - y for e, y in gold.items()})
    monkeypatch.setattr(trust_command, "load_backend", lambda model: FakeLM(strength=6))
    out = tmp_path / "report.html"
    assert cli.main(["trust", "--run", str(run_id), "--db", str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "polarity: possibly inverted" in printed and "WARNING possibly inverted" in printed
    page = out.read_text()
    assert "<h2>Polarity</h2>" in page and "<h2>Baselines</h2>" in page and "<h2>Seed agreement</h2>" in page and "<script" not in page
    assert cli.main(["trust", "--run", str(run_id), "--db", str(db), "--no-model"]) == 0
    assert "not checked (no model)" in capsys.readouterr().out
    assert cli.main(["trust", "--run", str(run_id), "--db", str(db), "--runs", "1,x"]) == 2


def test_trust_page_shows_each_check_and_updates_the_interval_from_verdicts(manager):
    dataset_id = add_polarity_dataset(manager)
    run_id, other_seed = (manager.start_run(dataset_id, fake_run_config(steps=12, seed=seed)) for seed in (0, 1))
    assert manager.wait(run_id).state == manager.wait(other_seed).state == "finished"
    at = open_page(manager, "trust", run_id)
    assert not at.exception
    assert [h.value for h in at.subheader] == ["Polarity", "Label balance", "Review queue",
                                               "Accuracy from a human audit", "Salience", "Baselines", "Seed agreement"]
    assert "labels agree with the model's calibrated zero-shot reading" in at.markdown[0].value
    assert at.metric[0].value == "0 of 12"  # a sample of 30 from 12 labeled examples is all of them
    at.radio[0].set_value("correct").run()
    at.radio[1].set_value("incorrect").run()
    assert at.metric[0].value == "2 of 12" and at.metric[1].value == "50%"
    assert any(f"runs {run_id}, {other_seed}: mean agreement" in m.value for m in at.markdown)
    assert at.multiselect(key=f"trust.seeds.{run_id}").value == [other_seed]


def test_verdicts_are_read_back_from_the_pins_that_record_them():
    events = pd.DataFrame({
        "seq": [1, 2, 3, 4, 5], "kind": ["propose", "pin", "pin", "pin", "pin"], "example": [0, 1, 2, 3, 1],
        "old_label": [None, 1, 0, None, 0], "proposed_label": [1, 1, 1, 0, 1]})
    # 1 pinned as it was: right (its later re-pin is not a new verdict); 2 pinned to the other: wrong;
    # 3 had no label, so its pin is a label, not a verdict
    assert trust.recorded_verdicts(events) == {1: True, 2: False}
    assert trust.recorded_verdicts(events.iloc[:0]) == {}


def test_verdicts_recorded_on_the_audit_and_trust_pages_become_pins_and_count_in_the_estimate(manager):
    run_id = manager.start_run(add_polarity_dataset(manager), fake_run_config(steps=12))
    assert manager.wait(run_id).state == "finished"
    audit = open_page(manager, "audit", run_id)
    example = audit.selectbox(key="audit.example").value
    label = int(manager.store.labels(run_id).set_index("example").loc[example, "label"])
    wrong = [b for b in audit.button if b.label.startswith("Wrong: pin")][0]
    wrong.click().run()
    assert not audit.exception
    assert any("the search's label was wrong (recorded as a pin)" in c.value for c in audit.caption)
    pins = manager.store.events(run_id).query("kind == 'pin'")
    assert pins[["example", "old_label", "proposed_label"]].values.tolist() == [[example, label, 1 - label]]

    at = open_page(manager, "trust", run_id)
    assert not at.exception and at.metric[0].value == "1 of 12"  # the Audit page's verdict, read back
    at.radio[0].set_value("correct").run()
    at.button(key="trust.record").click().run()
    assert manager.wait(run_id).state == "finished"
    again = open_page(manager, "trust", run_id)  # a new session: the verdicts are in the run, not the browser
    assert again.metric[0].value == "2 of 12" and again.metric[1].value == "50%"
    assert len(manager.store.events(run_id).query("kind == 'pin'")) == 2


def test_the_contextual_baseline_decides_against_the_models_content_free_lean(tmp_path):
    """Zhao et al.'s contextual calibration: True where the zero-shot log-odds beat those of an input
    that says nothing; batch calibration (centered) beats their mean over the dataset instead."""
    with Store(str(tmp_path / "icm.duckdb")) as store:
        examples, gold = polarity_examples(24, seed=5)
        dataset_id = store.add_dataset("polarity", SINGLE.to_dict(), examples, gold)
        run_id = stored_run(store, dataset_id, dict(gold))
        backend = FakeLM(strength=6)
        report = trust.diagnose(store, run_id, backend, seed_run_ids=[])
        odds = trust.label_log_odds(backend, SINGLE, (), store.load_examples(dataset_id))
        prior = report.balance.content_free_p_true
        contextual = (odds - np.log(prior / (1 - prior)) > 0).astype(int)
        np.testing.assert_array_equal(report.baseline_labels["zero-shot (contextual)"], contextual)
        np.testing.assert_array_equal(report.baseline_labels["zero-shot (centered)"], (odds > odds.mean()).astype(int))
        assert list(report.baseline_labels)[:3] == ["zero-shot (centered)", "zero-shot (contextual)", "zero-shot (argmax)"]
