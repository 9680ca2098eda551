"""Scoring: the fast exact scorer equals the naive reference; the context-window policy; prequential."""
from __future__ import annotations

import numpy as np
import pytest

from icm_engine.backends.fake import FakeLM
from icm_engine.core.config import SearchConfig
from icm_engine.core.scoring import ContextOverflowError, Scorer
from icm_engine.core.search import Search
from icm_engine.data.datasets import load_sample
from tests.fakes import SINGLE, polarity_examples

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tests.tiny_model import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def load_tiny(path, **settings):
    from icm_engine.core.config import ModelConfig
    from icm_engine.runs.models import load_model

    cache_budget_mb = settings.pop("cache_budget_mb", None)
    return load_model(ModelConfig(str(path), device="cpu", dtype="float32", **settings),
                      progress=lambda *_: None, cache_budget_mb=cache_budget_mb)


@pytest.fixture(scope="module")
def tiny_backend(tiny_dir):
    return load_tiny(tiny_dir)


@pytest.fixture(scope="module")
def sentiment():
    return load_sample("sentiment_yelp", task="sentiment")


def _scorers(backend, dataset):
    fast = Scorer(backend, dataset.task, dataset.examples)
    naive = Scorer(backend.naive(), dataset.task, dataset.examples)
    return fast, naive


def test_fast_equals_naive_on_random_sets_additions_relabels_and_fixes(tiny_backend, sentiment):
    fast, naive = _scorers(tiny_backend, sentiment)
    rng = np.random.default_rng(0)
    order = rng.choice(40, size=10, replace=False).tolist()
    labels = {i: int(rng.integers(2)) for i in order}
    sets = [(order, labels)]
    sets.append((order + [50], {**labels, 50: 1}))  # an addition
    sets.append((order, {**labels, order[4]: 1 - labels[order[4]]}))  # a relabel in the middle
    a, b = order[2], order[7]
    sets += [(order, {**labels, a: ya, b: yb}) for ya, yb in ((0, 1), (1, 0))]  # fix options
    for _ in range(3):  # more random label sets on the same examples
        sets.append((order, {i: int(rng.integers(2)) for i in order}))
    fast_evals = [fast.evaluate(o, l) for o, l in sets]  # one by one, as a search asks, cache warm
    naive_evals = naive.evaluate_many(sets)
    for f, g in zip(fast_evals, naive_evals):
        assert abs(f.utility(50) - g.utility(50)) <= 1e-3
        for i in f.raw:
            np.testing.assert_allclose(f.raw[i], g.raw[i], atol=1e-4)


def test_a_search_on_the_fast_scorer_scores_every_state_as_the_naive_one(tiny_backend, sentiment):
    # 24 claims: the final pass labels every one, and the naive reference then scores each with all
    # the others in its prompt (on the whole sample, 400 prompts of 400 demonstrations: a minute)
    fast = Scorer(tiny_backend, sentiment.task, sentiment.examples[:24])
    naive = Scorer(tiny_backend.naive(), sentiment.task, sentiment.examples[:24])
    search = Search(fast, SearchConfig(seed=1, steps=8, k_init=4, alpha=1.0))
    search.initialize()
    while not search.done:
        search.step()
        reference = naive.evaluate(search.order(), search.label_map())
        assert abs(search._current_evaluation().utility(search.alpha) - reference.utility(search.alpha)) <= 1e-3


def test_a_search_under_a_budget_far_below_its_working_set_scores_as_the_naive_one(tmp_path, sentiment):
    """Room for about two of a step's 10-14 prompts: every scoring step evicts, a miss recomputes,
    and the numbers stay the reference's. The order the step starts from stays covered."""
    from icm_engine.backends.transformers_backend import memory
    from tests.tiny_model import build_tiny_model_dir

    # 2048 positions: every prompt fits whole (a dropped demonstration would leave nothing held)
    backend = load_tiny(build_tiny_model_dir(tmp_path / "tiny", max_positions=2048), cache_budget_mb=0.5)
    examples = sentiment.examples[:14]
    fast, naive = Scorer(backend, sentiment.task, examples), Scorer(backend.naive(), sentiment.task, examples)
    fast.remember = 0  # every scored step asks the store: what this test watches
    store = backend.cache_store
    search = Search(fast, SearchConfig(seed=1, steps=10, k_init=10, alpha=1.0, t0=1.0, stop="steps",
                                      final_pass=False))  # some proposals rejected, some accepted
    search.initialize()
    one_prompt = memory.kv_bytes_per_token(backend.model) * sum(
        backend.count_tokens(s) for s in fast.prompt(search.order(), search.label_map(), search.order()[0])[0].segments)
    assert 1.5 * one_prompt < store.budget_bytes < 3 * one_prompt
    scored_steps = 0
    while not search.done:
        before_order, before_labels, evictions = search.order(), search.label_map(), store.evictions
        before = backend.stats.snapshot()
        record = search.step()
        if backend.stats.since(before).tokens_forwarded:
            scored_steps += 1
            assert store.evictions > evictions
        current = search._current_evaluation()
        reference = naive.evaluate(search.order(), search.label_map())
        assert abs(current.utility(search.alpha) - reference.utility(search.alpha)) <= 1e-3
        for i in current.raw:
            np.testing.assert_allclose(current.raw[i], reference.raw[i], atol=1e-4, rtol=0)
        if not record.accepted:  # the step started from this order and held it: its demonstrations are still covered
            last = fast.prompt(before_order, before_labels, before_order[-1])[0]
            demonstrations = backend._prompt_tokens(last.segments[:-1])
            assert store.match_length(demonstrations) == len(demonstrations)
    assert scored_steps >= 5


def test_context_policy_drop_oldest_keeps_the_latest_demonstrations():
    examples, _ = polarity_examples(12)
    backend = FakeLM(context_window=40)
    scorer = Scorer(backend, SINGLE, examples)
    order = list(range(10))
    labels = {i: i % 2 for i in order}
    query, dropped = scorer.prompt(order, labels, target=9)
    assert dropped > 0
    kept = [s for s in query.segments[:-1:2]]
    assert kept == [scorer.prompts.query(j) for j in order[dropped:9]]  # the oldest went first
    assert sum(backend.count_tokens(s) for s in query.segments) + 1 <= 40
    evaluation = scorer.evaluate(order, labels)
    assert evaluation.dropped_demos > 0


def test_context_policy_error_says_what_to_do():
    examples, _ = polarity_examples(12)
    scorer = Scorer(FakeLM(context_window=40), SINGLE, examples, context_policy="error")
    with pytest.raises(ContextOverflowError, match="context window"):
        scorer.evaluate(list(range(10)), {i: 0 for i in range(10)})


def test_an_empty_batch_answers_zero_rows_of_two_labels():
    """Every backend answers no queries with [0, 2] (or [0, n] for n label words it was given)."""
    backend = FakeLM()
    assert backend.label_logprobs([]).shape == (0, 2)
    assert backend.sequence_label_logprobs(("Review: good.",), [], SINGLE.label_words).shape == (0, 2)
    assert backend.sequence_label_logprobs(("Review: good.",), [], (" a", " b", " c")).shape == (0, 3)
    assert backend.stats.model_calls == 0


def test_prequential_reads_each_label_after_its_predecessors_only(tiny_backend, sentiment):
    order, labels = [3, 8, 1, 5], {3: 1, 8: 0, 1: 1, 5: 0}
    approx = Scorer(tiny_backend, sentiment.task, sentiment.examples, mode="prequential").evaluate(order, labels)
    exact = Scorer(tiny_backend.naive(), sentiment.task, sentiment.examples)
    for position, target in enumerate(order):
        prefix = order[:position]
        query, _ = exact.prompt(prefix + [target], labels, target)
        expected = tiny_backend.naive().label_logprobs([query])[0]
        np.testing.assert_allclose(approx.raw[target], expected, atol=1e-4)


# in-context folds -------------------------------------------------------------------------

def test_with_folds_a_prompt_shows_the_other_folds_labels_only_and_the_fast_scorer_stays_exact(tiny_backend, sentiment):
    examples = sentiment.examples[:40]
    fast = Scorer(tiny_backend, sentiment.task, examples, folds=3)
    naive = Scorer(tiny_backend.naive(), sentiment.task, examples, folds=3)
    rng = np.random.default_rng(1)
    order = rng.choice(40, size=12, replace=False).tolist()
    labels = {i: int(rng.integers(2)) for i in order}
    target = order[5]
    query, _ = fast.prompt(order, labels, target)
    shown = [j for j in order if j % 3 != target % 3]
    assert query.segments == fast.prompts.segments(((j, labels[j]) for j in shown), target)
    relabeled = order[2] if order[2] % 3 != target % 3 else order[3]
    sets = [(order, labels), (order + [int(np.setdiff1d(np.arange(40), order)[0])], {**labels}),
            (order, {**labels, relabeled: 1 - labels[relabeled]})]
    sets[1][1][sets[1][0][-1]] = 1  # an addition
    for (o, l), f, g in zip(sets, [fast.evaluate(o, l) for o, l in sets], naive.evaluate_many(sets)):
        assert abs(f.utility(20) - g.utility(20)) <= 1e-3
        for i in f.raw:
            np.testing.assert_allclose(f.raw[i], g.raw[i], atol=1e-4)
    # a target never reads its own fold's labels: relabeling a fold-mate leaves its scores as they were
    mate = next(j for j in order if j % 3 == target % 3 and j != target)
    flipped = {**labels, mate: 1 - labels[mate]}
    assert fast.prompt(order, flipped, target) == fast.prompt(order, labels, target)
    np.testing.assert_allclose(fast.evaluate(order, flipped).raw[target], fast.evaluate(order, labels).raw[target],
                               atol=1e-6)


def test_with_folds_a_relabel_forwards_a_fraction_of_the_leave_one_out_tokens(tmp_path, sentiment):
    """The point of folds: a relabel recomputes F - 1 prompts (and the queries after them), not one
    prompt per labeled example."""
    from tests.tiny_model import build_tiny_model_dir

    backend = load_tiny(build_tiny_model_dir(tmp_path / "tiny", max_positions=4096))
    examples = sentiment.examples[:32]
    order = list(range(32))
    labels = {i: i % 2 for i in order}
    relabeled = {**labels, 4: 1 - labels[4]}  # early in the order: most of every prompt comes after it
    forwarded = {}
    for folds in (0, 4):
        scorer = Scorer(backend, sentiment.task, examples, folds=folds, remember=0)
        backend.cache_store.clear()
        scorer.evaluate(order, labels)
        before = backend.stats.snapshot()
        scorer.evaluate(order, relabeled)
        forwarded[folds] = backend.stats.since(before).tokens_forwarded
    assert forwarded[4] * 4 < forwarded[0]


def test_folds_are_a_setting_of_the_in_context_search_only():
    from icm_engine.core.config import RunConfig, preset
    from icm_engine.runs.runner import make_scorer

    assert SearchConfig().icl_folds == 4 and preset("paper").icl_folds == preset("released_code").icl_folds == 0
    for bad in ({"icl_folds": 1}, {"icl_folds": -2}):
        with pytest.raises(ValueError, match="icl_folds"):
            SearchConfig(**bad)
    examples, _ = polarity_examples(6)

    def folds_of(**search):
        return make_scorer(FakeLM(), SINGLE, examples, RunConfig(task="polarity", dataset="t", search=SearchConfig(**search))).folds

    assert folds_of() == 4 and folds_of(icl_folds=0) == 0
    assert folds_of(scorer="prequential") == 0 and folds_of(algorithm="scalable") == 0  # no use for it there
    # a run stored before folds existed was scored leave-one-out, and resumes so
    stored = RunConfig(task="polarity", dataset="t").to_dict()
    del stored["search"]["icl_folds"]
    assert RunConfig.from_dict(stored).search.icl_folds == 0
