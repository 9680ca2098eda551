"""Trust warnings account for the number of examples (issue 15): on a handful of examples a share
gap or a surface feature's AUROC is mostly noise, and the report says "too few examples to tell"."""
from __future__ import annotations

import numpy as np
import pandas as pd

from icm_engine.evaluation import salience, trust
from icm_engine.store.database import Store
from icm_engine.core.tasks import Example
from tests.fakes import SINGLE
from tests.test_trust import stored_run

WORDS = ["food", "place", "table", "window", "menu", "street", "door", "chair", "soup", "bread", "wine", "waiter",
         "lunch", "dinner", "price", "music", "seat", "view", "salad", "tea"]


def random_texts(n: int, rng) -> list[Example]:
    return [Example(f"x{k}", {"text": " ".join(rng.choice(WORDS, size=int(rng.integers(2, 14))))}) for k in range(n)]


def test_random_labels_of_16_examples_rarely_warn_while_labels_by_length_on_64_still_do():
    rng = np.random.default_rng(16)
    warned = flagged_before = 0
    for _ in range(40):
        examples = random_texts(16, rng)
        labels = {e: int(y) for e, y in enumerate(rng.permutation([0] * 8 + [1] * 8))}
        margins = {e: float(rng.normal()) for e in labels}  # a model that sees nothing either
        check = salience.salience_check(SINGLE, examples, labels, margins)
        warned += bool(check.warnings)
        flagged_before += bool(check.warnings or check.inconclusive)  # what the strength rule alone said
        assert all(w.startswith("too few examples to tell") for w in check.inconclusive)
    assert warned <= 2 and flagged_before >= 20  # the old rule cried wolf on most of these
    examples = random_texts(64, rng)
    lengths = np.array([len(e.fields["text"]) for e in examples])
    by_length = {e: int(lengths[e] > np.median(lengths)) for e in range(64)}
    margins = {e: float(rng.normal(0.3 * (2 * y - 1), 1.0)) for e, y in by_length.items()}
    check = salience.salience_check(SINGLE, examples, by_length, margins)
    assert check.warnings[0].startswith("salience: length (characters) predicts the labels with AUROC 1.00")
    assert check.features.iloc[0]["p"] < 0.01


def test_a_perfect_feature_on_few_examples_of_one_label_is_too_few_to_tell():
    rng = np.random.default_rng(3)
    examples = random_texts(16, rng)
    lengths = np.array([len(e.fields["text"]) for e in examples])
    longest = set(np.argsort(lengths)[-4:].tolist())  # 4 False, 12 True: length separates them perfectly
    labels = {e: int(e not in longest) for e in range(16)}
    check = salience.salience_check(SINGLE, examples, labels, {e: 0.0 for e in labels})
    assert check.features.iloc[0]["strength"] == 1.0 and check.features.iloc[0]["p"] < 0.05
    assert not check.warnings
    assert any("with 4 examples of one label (fewer than 8)" in w for w in check.inconclusive)


def test_permutation_p_values_are_family_wise_and_match_an_exact_count():
    y = [0, 0, 1, 1]
    features = {"a": np.array([1.0, 2, 3, 4])}
    # 2 of the 6 arrangements of two 1s among four reach strength 1 (both orders): p -> 1/3
    p = salience.permutation_p_values(features, y, [1.0], permutations=20000)
    assert abs(p[0] - 1 / 3) < 0.02
    more = dict(features, b=np.array([1.0, 3, 2, 4]), c=np.array([2.0, 1, 4, 3]))
    assert salience.permutation_p_values(more, y, [1.0, 1.0, 1.0], permutations=20000)[0] > p[0]  # more features tried
    assert np.isnan(salience.permutation_p_values(features, [1, 1, 1, 1], [np.nan])).all()


def test_balance_gaps_on_16_examples_are_inconclusive_and_on_64_they_warn():
    def check(n: int, run_true: int, zero_shot_true, prior: float):
        """The first run_true examples labeled True; zero-shot True on the first zero_shot_true (or on a set)."""
        labels = {e: int(e < run_true) for e in range(n)}
        said_true = range(zero_shot_true) if isinstance(zero_shot_true, int) else zero_shot_true
        odds = np.where(np.isin(np.arange(n), list(said_true)), 1.0, -1.0) + np.linspace(0, 0.01, n)
        return trust.balance_check(pd.DataFrame(), labels, n, prior, odds)

    # the report that started this: 12 of 16 True against 7 of 16 zero-shot, 9 of 16 agreeing (6 turned
    # to True, 1 to False), content-free P(True) 0.8
    small = check(16, 12, [0, 1, 2, 3, 4, 5, 12], 0.8)
    assert not small.warnings and len(small.inconclusive) == 2
    assert all(w.startswith("too few examples to tell: ") for w in small.inconclusive)
    large = check(64, 48, 28, 0.8)
    assert [w.split(":")[0] for w in large.warnings] == ["balance", "the labels lean the way the model's content-free prior does (P(True) = 0.80 for an empty input)"]
    assert check(8, 7, 4, 0.5).inconclusive[0].startswith("too few examples to tell: one-sided: 88%")
    assert check(40, 40, 20, 0.5).warnings[0].startswith("one-sided: 100% of the labels are True (p = ")


def test_the_report_shows_what_was_too_few_to_tell(tmp_path):
    from icm_engine.evaluation.trust_report import summary_lines, to_html

    store = Store(":memory:")
    rng = np.random.default_rng(3)
    examples = random_texts(16, rng)
    dataset_id = store.add_dataset("few", SINGLE.to_dict(), examples, None)
    lengths = np.array([len(e.fields["text"]) for e in examples])
    longest = set(np.argsort(lengths)[-4:].tolist())
    report = trust.diagnose(store, stored_run(store, dataset_id, {e: int(e not in longest) for e in range(16)}))
    assert not report.warnings and report.inconclusive
    assert any(line.startswith("inconclusive: too few examples to tell: length") for line in summary_lines(report))
    page = to_html(report)
    assert "No check raised a warning." in page and "<b>Too few examples to tell</b>" in page


def test_labels_that_follow_the_group_not_the_example_raise_a_salience_warning():
    from icm_engine.core.tasks import Task

    grouped = Task(name="claims", template="Q: {question}\nClaim: {choice}\nTrue?", fields=("question", "choice"),
                   rule="none", group_field="question")
    rng = np.random.default_rng(5)
    examples = [Example(f"q{g}-c{c}", {"question": f"question {g}", "choice": " ".join(rng.choice(WORDS, size=4))},
                        group=f"q{g}") for g in range(16) for c in range(4)]
    by_question = {e: int(g) for e, g in enumerate(np.repeat(rng.permutation([0] * 8 + [1] * 8), 4))}
    margins = {e: 2.0 for e in by_question}  # a model sure of each: its margin cannot tell
    check = salience.salience_check(grouped, examples, by_question, margins)
    assert check.features.iloc[0]["feature"] == "its question (the other examples' share True)"
    assert check.warnings[0].startswith("salience: its question (the other examples' share True) predicts the labels "
                                        "with AUROC 1.00")
    assert check.features.iloc[0]["p"] < 0.01
    mixed = {e: int(y) for e, y in enumerate(rng.permutation([0, 1] * 32))}
    assert not salience.salience_check(grouped, examples, mixed, margins).warnings
    # where a consistency rule ties a group's labels, the group is the rule's doing, not a feature
    paired = Task(**{**grouped.to_dict(), "rule": "complementary"})
    assert "its question" not in " ".join(salience.salience_check(paired, examples, by_question, margins).features["feature"])


def test_frequent_word_features_break_ties_alphabetically():
    """A report must not change with the process's string hashing (ties used to come out in set order)."""
    examples = [Example("a", {"text": "zeta beta"}), Example("b", {"text": "alpha gamma"}), Example("c", {"text": "delta"})]
    assert list(salience.surface_features(SINGLE, examples, top_words=3)) == [
        "length (characters)", "contains 'alpha'", "contains 'beta'", "contains 'delta'"]
