"""Algorithm 1 and 2 on the fake model: schedule, acceptance, fixes, steering, determinism, resume."""
from __future__ import annotations

import math

import numpy as np
import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import SearchConfig
from icm_engine.core.records import ParamChange
from icm_engine.core.scoring import Scorer, normalize
from icm_engine.core.search import Search, acceptance_probability, temperature
from tests.fakes import PAIRED, SINGLE, PrefixStoreLM, polarity_examples


def make_search(n=16, paired=False, seed=0, steps=40, **overrides):
    examples, gold = polarity_examples(n, seed=1, paired=paired)
    config = SearchConfig(seed=seed, steps=steps, **{"k_init": 4, **overrides})
    scorer = Scorer(FakeLM(strength=6), PAIRED if paired else SINGLE, examples,
                    calibration=config.calibration, use_consistency=config.use_consistency, objective=config.objective)
    return Search(scorer, config), gold


def run_all(search):
    records = [search.initialize()]
    while not search.done:
        records.append(search.step())
    return records


def accuracy(search, gold):
    labels = search.label_map()
    return np.mean([labels[i] == gold[i] for i in labels])


def test_temperature_follows_the_paper_schedule():
    assert temperature(1, 10, 0.01, 0.99) == 10
    assert temperature(100, 10, 0.01, 0.99) == pytest.approx(10 / (1 + 0.99 * math.log(100)))
    assert temperature(10**9, 1e-3, 0.01, 0.99) == 0.01


def test_acceptance_probability_never_overflows():
    assert acceptance_probability(1e6, 0.01) == 1.0
    assert acceptance_probability(-1e6, 0.01) < 1e-300
    assert acceptance_probability(-1.0, 1.0) == pytest.approx(math.exp(-1))


def test_initialization_labels_k_random_examples():
    search, _ = make_search()
    record = search.initialize()
    assert record.kind == "init" and record.iteration == 0
    assert len(search.labels) == 4
    assert sorted(f.example for f in record.flips if f.cause == "initial") == sorted(search.labels)
    assert sorted(s.position for s in search.labels.values()) == [0, 1, 2, 3]


def test_search_finds_the_concept_up_to_orientation():
    search, gold = make_search(n=16, steps=60)
    run_all(search)
    assert len(search.labels) >= 12
    acc = accuracy(search, gold)
    assert max(acc, 1 - acc) >= 0.9


def test_step_record_is_complete_and_consistent():
    search, _ = make_search(steps=10)
    records = run_all(search)
    assert [r.kind for r in records[:11]] == ["init"] + ["propose"] * 10
    assert [r.kind for r in records[11:]] in ([], ["final_pass"])  # the final pass labels what is left
    answered_from_memory = 0
    for r in records[1:11]:
        assert r.temperature == temperature(r.iteration, 10, 0.01, 0.99)
        assert r.example is not None and r.proposed_label in (0, 1)
        if r.proposed_label != r.old_label:
            assert r.delta == pytest.approx(r.u_after - r.u_before)
            assert 0 <= r.draw < 1 and 0 <= r.accept_prob <= 1
            assert r.accepted == (r.delta > 0 or r.draw < r.accept_prob)
            assert (r.model_calls > 0) == (r.tokens_forwarded > 0)
            answered_from_memory += r.model_calls == 0  # D-hat scored before, at an earlier step
        if r.accepted and r.proposed_label != r.old_label:
            assert r.flips[0].cause == "proposal" and r.flips[0].new == r.proposed_label
        if not r.accepted:
            assert r.flips == []
    assert answered_from_memory <= search.scorer.remembered_hits


def test_each_step_records_the_prompt_tokens_its_prefix_store_served():
    examples, _ = polarity_examples(12, seed=1)
    backend = PrefixStoreLM(strength=6)
    search = Search(Scorer(backend, SINGLE, examples), SearchConfig(seed=0, steps=8, k_init=4))
    records = run_all(search)
    assert sum(r.tokens_reused for r in records) == backend.stats.tokens_reused > 0
    assert all(r.tokens_reused > 0 for r in records if r.kind == "propose" and r.model_calls)
    assert all(r.tokens_reused == 0 for r in run_all(make_search(n=12, steps=8)[0]))  # no store, nothing served


def test_consistency_fix_leaves_complementary_pairs_consistent():
    search, gold = make_search(n=10, paired=True, steps=50)
    records = run_all(search)
    assert any(r.fixes for r in records), "random initial labels on pairs should need fixing"
    assert search.scorer.consistency.inconsistent_pairs(search.label_map()) == []
    for r in records:
        for fix in r.fixes:
            assert fix.after[0] != fix.after[1]  # complementary options differ
    acc = accuracy(search, gold)
    assert max(acc, 1 - acc) >= 0.9


def test_group_mates_are_sampled_first():
    search, _ = make_search(n=10, paired=True, steps=1)
    search.initialize()
    candidates = list(range(search.n_examples))
    weights = search._sampling_weights(candidates)
    for i, w in zip(candidates, weights):
        has_labeled_mate = any(p in search.labels for p in search.scorer.consistency.partners(i))
        assert w == (100 if (i not in search.labels and has_labeled_mate) else 1)


def test_without_consistency_there_is_no_fix_and_no_penalty():
    search, _ = make_search(n=10, paired=True, steps=20, use_consistency=False)
    records = run_all(search)
    assert all(not r.fixes for r in records)
    assert all(r.i_after in (0, None) for r in records)


def test_same_seed_same_trajectory_other_seed_differs():
    a, _ = make_search(seed=3)
    b, _ = make_search(seed=3)
    c, _ = make_search(seed=4)
    ra, rb, rc = run_all(a), run_all(b), run_all(c)
    assert [(r.example, r.proposed_label, r.accepted) for r in ra] == [(r.example, r.proposed_label, r.accepted) for r in rb]
    assert [r.example for r in ra] != [r.example for r in rc]


def test_resume_from_snapshot_matches_uninterrupted():
    full, _ = make_search(n=10, paired=True, seed=5, steps=30)
    run_all(full)
    first, _ = make_search(n=10, paired=True, seed=5, steps=30)
    first.initialize()
    for _ in range(12):
        first.step()
    resumed = Search(first.scorer, first.config, first.snapshot())
    while not resumed.done:
        resumed.step()
    assert resumed.label_map() == full.label_map()
    assert resumed.order() == full.order()


def test_pinned_labels_are_never_changed_by_the_search():
    search, gold = make_search(n=10, paired=True, steps=40)
    search.initialize()
    target = next(iter(search.labels))
    wrong = 1 - gold[target]
    record = search.pin(target, wrong)
    assert record.kind == "pin" and search.labels[target].pinned
    while not search.done:
        r = search.step()
        assert r.example != target
    assert search.labels[target].label == wrong


def test_excluded_examples_leave_and_stay_out():
    search, _ = make_search(n=10, steps=30)
    search.initialize()
    target = next(iter(search.labels))
    record = search.exclude(target)
    assert record.flips and record.flips[0].new is None and record.flips[0].cause == "human"
    while not search.done:
        assert search.step().example != target
    assert target not in search.labels


def test_set_params_changes_alpha_mid_run():
    search, _ = make_search(steps=5)
    search.initialize()
    before = (search.alpha, search.t0)
    record = search.set_params(alpha=20, t0=3)
    assert search.alpha == 20 and search.t0 == 3 and "alpha=20" in record.note
    assert record.params == [ParamChange("alpha", before[0], 20.0), ParamChange("t0", before[1], 3.0)]
    with pytest.raises(ValueError, match="positive"):  # refused whole: alpha is not set either
        search.set_params(alpha=5, t0=0)
    assert search.alpha == 20
    r = search.step()
    assert r.temperature == temperature(1, 3, 0.01, 0.99)


def test_centered_calibration_removes_a_label_bias():
    raw = np.log(np.array([[0.05, 0.9], [0.02, 0.95], [0.2, 0.7]]))
    plain = normalize(raw)
    centered = normalize(raw, "centered")
    assert (plain.argmax(axis=1) == 1).all()  # a biased model says True to everything
    assert (centered.argmax(axis=1) == [1, 1, 0]).all()  # relative to its habit, the third is False
    np.testing.assert_allclose(np.exp(centered).sum(axis=1), 1.0)


def test_stop_progress_counts_labels_then_quiet_steps_and_ends_full():
    search, _ = make_search(n=12, steps=400, stop="labeled", final_pass=False)
    search.initialize()
    seen = []
    while not search.done:
        search.step()
        seen.append(search.stop_progress())
    phases = [phase for phase, _, _ in seen]
    labeling = [done for phase, done, total in seen if phase == "labeled"]
    assert phases[0] == "labeled" and phases[-1] == "quiet steps" and "labeled" not in phases[phases.index("quiet steps"):]
    assert labeling == sorted(labeling) and all(total == 12 for phase, _, total in seen if phase == "labeled")
    assert seen[-1][1] == seen[-1][2] == 12  # one quiet sweep of 12 steps: the rule that stopped it
    capped, _ = make_search(n=12, steps=5, stop="steps")
    run_all(capped)
    assert capped.stop_progress() == ("steps", 5, 5)


# ----- what a search spares: labeled sets scored before -----

def test_the_scorer_answers_a_labeled_set_it_scored_before_from_memory():
    examples, _ = polarity_examples(6, seed=1)
    backend = FakeLM(strength=6)
    scorer = Scorer(backend, SINGLE, examples, calibration="centered", objective="mean")
    order, labels = [0, 1, 2, 3], {0: 1, 1: 0, 2: 1, 3: 0}
    first = scorer.evaluate(order, labels)
    calls = backend.stats.model_calls
    assert scorer.evaluate(order, dict(labels)) is first and backend.stats.model_calls == calls
    relabeled = scorer.evaluate_many([(order, labels), (order, {**labels, 2: 0})])  # one known, one new
    # the new set's prompts are asked, but for example 2's own: it never shows 2's label, so it was answered before
    assert relabeled[0] is first and backend.stats.model_calls == calls + len(order) - 1
    assert scorer.remembered_hits == 2 and scorer.answered_prompts == 1
    reordered = scorer.evaluate([1, 0, 2, 3], labels)  # another demonstration order is another prompt set
    # ... but for the prompts of 0 and 1, which show the others in the same order as before
    assert reordered is not first and backend.stats.model_calls == calls + 2 * len(order) - 3
    assert scorer.answered_prompts == 3
    scorer.remember = 1  # the oldest is forgotten first
    scorer.evaluate(order, {**labels, 3: 1})
    assert len(scorer._remembered) == 1


@pytest.mark.parametrize("paired", [False, True])
def test_remembering_evaluations_changes_no_decision_and_spares_model_calls(paired):
    runs = []
    for remember in (0, 256):
        # a cold search under the paper's sum: rejected additions come back while D stands
        search, _ = make_search(n=10, paired=paired, seed=1, steps=60, t0=0.05,
                                k_init=6, objective="sum", calibration="none")
        search.scorer.remember = remember
        records = run_all(search)
        runs.append((search, [(r.kind, r.example, r.proposed_label, r.accepted, r.u_after, r.draw) for r in records]))
    (plain, plain_steps), (remembering, remembering_steps) = runs
    assert remembering_steps == plain_steps and remembering.label_map() == plain.label_map()
    assert remembering.order() == plain.order()
    assert remembering.scorer.remembered_hits > 0
    assert remembering.scorer.backend.stats.model_calls < plain.scorer.backend.stats.model_calls
