"""Scalable ICM (core/scalable.py, Algorithms 3 and 4) on hand-checkable cases, with learners that
need no model: folds keep groups whole, Algorithm 4 keeps the most confident member, a fold
proposal repairs a planted mislabel, a model's lean to one label does not win, and a run resumed
from the store decides exactly as one never stopped."""
from __future__ import annotations

import numpy as np

from icm_engine.core.config import LearnerConfig, SearchConfig
from icm_engine.core.scalable import ScalableSearch
from icm_engine.core.tasks import Example
from icm_engine.learners.base import Prepared, log_softmax_pair
from icm_engine.learners.folds import PreparedFolds
from icm_engine.learners.head import HeadLearner


class Centroid:
    """A fold learner over 1-D features: P(True) from the side of the labeled classes' midpoint."""

    def __init__(self, x, prior) -> None:
        self.x, self.prior = np.asarray(x, float), np.asarray(prior, float)

    initial_source = "the prior"

    def initial(self):
        return log_softmax_pair(self.prior)

    def fit_predict(self, train, labels, test):
        ones, zeros = self.x[train][labels == 1], self.x[train][labels == 0]
        middle = (ones.mean() + zeros.mean()) / 2 if len(ones) and len(zeros) else 0.0
        sign = 1.0 if not (len(ones) and len(zeros)) or ones.mean() >= zeros.mean() else -1.0
        return log_softmax_pair(3.0 * sign * (self.x[test] - middle))


def singles(n):
    return [Example(f"e{i}", {"text": str(i)}) for i in range(n)]


def test_folds_cover_every_example_once_and_keep_groups_whole():
    examples = [Example(f"e{i}", {"text": str(i)}, group=f"g{i // 2}", key=str(i % 2)) for i in range(20)]
    search = ScalableSearch(Centroid(np.arange(20), np.zeros(20)), examples, "complementary", SearchConfig(folds=3))
    folds = search._partition(np.random.default_rng(0))
    members = sorted(int(i) for fold in folds for i in fold)
    assert members == list(range(20))
    for fold in folds:
        assert all((i ^ 1) in fold for i in fold), "a complementary pair was split across folds"


def test_algorithm_4_keeps_the_most_confident_member_and_makes_its_partner_agree():
    examples = [Example(f"e{i}", {"text": str(i)}, group="g", key=str(i)) for i in range(2)]
    search = ScalableSearch(Centroid([0, 1], [0, 0]), examples, "complementary", SearchConfig())
    # both claimed True: complementary claims cannot both hold; example 1 is the surer one
    labels, fixed = search._fix_max_prob({0: 1, 1: 1}, {0: 0.6, 1: 0.9})
    assert labels == {0: 0, 1: 1} and fixed == [0]
    labels, fixed = search._fix_max_prob({0: 1, 1: 1}, {0: 0.95, 1: 0.9})
    assert labels == {0: 1, 1: 0} and fixed == [1]
    labels, fixed = search._fix_max_prob({0: 0, 1: 1}, {0: 0.5, 1: 0.5})  # already consistent: untouched
    assert labels == {0: 0, 1: 1} and fixed == []


def test_a_fold_proposal_repairs_a_planted_mislabel_and_raises_u():
    x = np.array([-3, -2.5, -2, -1.5, -1, 1, 1.5, 2, 2.5, 3.0])
    prior = x.copy()
    prior[2] = 5.0  # the model's own reading gets example 2 wrong, confidently
    search = ScalableSearch(Centroid(x, prior), singles(10), "none", SearchConfig(folds=2, seed=0, steps=20))
    init = search.step()
    assert search.labels[2].label == 1 and init.kind == "init" and len(init.flips) == 10
    while not search.done:
        record = search.step()
        if any(f.example == 2 for f in record.flips):
            assert record.accepted and record.delta > 0 and record.flips[0].cause == "fold"
    assert [search.labels[i].label for i in range(10)] == [0] * 5 + [1] * 5


def planted(n=240, d=24, seed=0, lean=4.0):
    """Features whose first direction is the concept; the model's prior reads it weakly, with a
    strong lean to True (as Gemma 3 270M leans to one label word)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, n)
    features = rng.normal(size=(n, d))
    features[:, 0] += 2.0 * (2 * truth - 1)
    prior = 0.8 * features[:, 0] + lean + rng.normal(scale=1.0, size=n)
    return truth, Prepared(singles(n), [""] * n, features.astype(np.float32), prior, {"layer": 1})


class FeaturesOnly(HeadLearner):
    """The head learner over given features (no model to read them from)."""

    def __init__(self, l2: float = 0.1) -> None:
        self.config = LearnerConfig(l2=l2)


def test_a_lean_to_one_label_does_not_win_and_the_search_finds_the_planted_concept():
    truth, prepared = planted()
    raw_zero = log_softmax_pair(prepared.prior)
    assert raw_zero.argmax(1).mean() > 0.95, "the constructed model says True to almost everything"
    search = ScalableSearch(PreparedFolds(FeaturesOnly(), prepared), prepared.examples, "none",
                            SearchConfig(folds=4, seed=0, steps=40))
    while not search.done:
        search.step()
    labels = np.array([search.labels[i].label for i in range(len(truth))])
    assert (labels == truth).mean() >= 0.9
    assert 0.3 < labels.mean() < 0.7


def utility_of(prepared, l2):
    search = ScalableSearch(PreparedFolds(FeaturesOnly(l2), prepared), prepared.examples, "none", SearchConfig(folds=4))
    search.folds = search._partition(np.random.default_rng(0))

    def u(labels):
        labels = {i: int(y) for i, y in enumerate(labels)}
        return search._utility_parts(labels, search._cross_fit(labels)).u
    return u


def test_u_ranks_the_concept_above_one_label_everywhere_and_above_an_arbitrary_direction():
    truth, prepared = planted(seed=1)
    arbitrary = (prepared.features[:, 5] > 0).astype(int)  # a direction the model's prior does not read
    u = utility_of(prepared, 0.1)
    assert abs(u(np.ones_like(truth))) < 1e-6  # centered: one label everywhere predicts nothing
    assert u(truth) > u(arbitrary) + 10.0
    assert u(truth) > u(1 - truth) + 10.0  # the inverted labeling: the prior breaks the symmetry
    # Why the head keeps the prior and a penalty: nearly free, it predicts an arbitrary hyperplane
    # labeling as well as the concept (better, here), and the search would have no reason to prefer it.
    loose = utility_of(prepared, 0.001)
    assert loose(arbitrary) > loose(truth)


def test_a_scalable_run_resumed_from_the_store_decides_as_one_never_stopped(tmp_path):
    from icm_engine.store.database import Store
    from tests.fakes import SINGLE

    truth, prepared = planted(n=80, seed=2)
    config = SearchConfig(folds=3, seed=5, steps=15, stop="steps", t0=50.0)

    def fresh(snapshot=None):
        return ScalableSearch(PreparedFolds(FeaturesOnly(l2=0.3), prepared), prepared.examples, "none", config, snapshot)

    straight = fresh()
    expected = [straight.step() for _ in range(16)]
    with Store(str(tmp_path / "s.duckdb")) as store:
        dataset = store.add_dataset("planted", SINGLE.to_dict(), prepared.examples, None, source="test")
        run_id = store.create_run(dataset, {"search": {}}, {"name": "features"})
        search, got = fresh(), []
        for stop_at in (4, 8, 13, 16):  # killed after step 3, 7 and 12: reopened from the store each time
            while len(got) < stop_at:
                record = search.step()
                store.record_step(run_id, record, search.snapshot())
                got.append(record)
            search = fresh(store.load_snapshot(run_id))
    assert [(r.iteration, r.accepted, r.u_after, [(f.example, f.new) for f in r.flips]) for r in got] == \
        [(r.iteration, r.accepted, r.u_after, [(f.example, f.new) for f in r.flips]) for r in expected]
    assert any(r.accepted and r.flips for r in expected[1:]), "the case should change labels after init"


def test_a_scalable_runs_alpha_t0_and_extension_are_parameter_rows_kept_on_reopening(tmp_path):
    """Steering is shared (core/steering.py): the scalable search records its changes the same way."""
    from icm_engine.core.records import ParamChange
    from icm_engine.core.search import temperature
    from icm_engine.store.database import Store
    from tests.fakes import SINGLE

    truth, prepared = planted(n=40, seed=3)
    config = SearchConfig(folds=3, seed=5, steps=3, stop="steps", alpha=20.0, t0=50.0)

    def fresh(snapshot=None):
        return ScalableSearch(PreparedFolds(FeaturesOnly(l2=0.3), prepared), prepared.examples, "none", config, snapshot)

    with Store(str(tmp_path / "s.duckdb")) as store:
        run_id = store.create_run(store.add_dataset("planted", SINGLE.to_dict(), prepared.examples, None), {}, {})
        search = fresh()
        while not search.done:
            store.record_step(run_id, search.step(), search.snapshot())
        records = [search.set_params(alpha=5.0, t0=2.0), search.extend(2)]
        assert records[0].params == [ParamChange("alpha", 20.0, 5.0), ParamChange("t0", 50.0, 2.0)]
        assert records[1].params == [ParamChange("steps", 3, 5), ParamChange("extended_until", None, 5)]
        for record in records:
            store.record_step(run_id, record, search.snapshot())
        rows = store.param_changes(run_id)
        assert rows["parameter"].tolist() == ["alpha", "t0", "steps", "extended_until"]
        assert rows["new_value"].tolist() == [5.0, 2.0, 5.0, 5.0] and rows["iteration"].tolist() == [3] * 4
        reopened = fresh(store.load_snapshot(run_id))
        assert (reopened.alpha, reopened.t0, reopened.progress.extended_until) == (5.0, 2.0, 5)
        assert not reopened.done and reopened.step().temperature == temperature(4, 2.0, config.t_min, config.beta)


def test_icm_run_scalable_on_a_tiny_model_starts_from_an_earlier_runs_labels_and_exports(tmp_path, capsys,
                                                                                       one_torch_thread):
    """The command a user types: an in-context run on the first sentences, then a scalable run over all
    of them that starts from a head fit on those labels; every example labeled, steps in the store."""
    from icm_engine import cli
    from icm_engine.store.database import Store
    from tests.tiny_model import build_tiny_model_dir

    model = str(build_tiny_model_dir(tmp_path / "llama"))
    words = ["wonderful", "great", "dull", "boring", "fun", "weak"]
    data = tmp_path / "reviews.csv"
    data.write_text("id,text\n" + "".join(f"r{i},the movie was {words[i % 6]} {i}\n" for i in range(30)))
    db = str(tmp_path / "icm.duckdb")
    common = ["--db", db, "--data", str(data), "--task", "sentiment_single", "--model", model]
    assert cli.main(["run", *common, "--limit", "8", "--steps", "10", "--stop", "steps", "--k-init", "4"]) == 0
    assert cli.main(["run", *common, "--algorithm", "scalable", "--init-run", "1", "--folds", "3", "--steps", "6",
                     "--head-layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "run 2: 30 examples" in out and "30 of 30 examples labeled" in out
    with Store(db) as store:
        events = store.events(2)
        assert events["kind"].iloc[0] == "init" and "fit on the 8 labels of run 1" in events["note"].iloc[0]
        assert set(events["kind"].iloc[1:]) <= {"fold"} and len(events) >= 2
        assert store.run(2)["config"]["learner"]["layer"] == 1
    assert cli.main(["export", "--db", db, "--run", "2", "--format", "csv", "--out", str(tmp_path / "l.csv")]) == 0
    assert len((tmp_path / "l.csv").read_text().splitlines()) == 31
    assert cli.main(["run", *common, "--algorithm", "scalable", "--init-run", "9"]) == 2


def test_a_scalable_run_in_the_studio_runs_to_the_end_steers_and_is_explained_on_audit(tmp_path):
    from dataclasses import replace

    from icm_engine.runs.manager import RunManager
    from tests.conftest import add_polarity_dataset, fake_run_config
    from tests.fakes import PolarityStates
    from tests.test_app_pages import open_page, plotly_titles

    manager = RunManager(str(tmp_path / "icm.duckdb"), backend_factory=lambda model, progress: PolarityStates(strength=1))
    try:
        config = fake_run_config(steps=9)
        config = replace(config, search=replace(config.search, algorithm="scalable", folds=3))
        run_id = manager.start_run(add_polarity_dataset(manager, n=24), config)
        assert manager.wait(run_id, timeout=60).state == "finished", manager.status(run_id).error
        events = manager.store.events(run_id)
        assert events["kind"].iloc[0] == "init" and set(events["kind"].iloc[1:]) == {"fold"}
        assert len(manager.store.labels(run_id)) == 24
        live = open_page(manager, "live", run_id)
        assert not live.exception and len(plotly_titles(live)) >= 3
        # steering reaches a scalable run too: a pin is recorded and kept through more steps
        manager.pin(run_id, 0, 0).result(timeout=10)
        manager.extend(run_id, 3).result(timeout=10)
        assert manager.wait(run_id, timeout=60).state in ("finished", "paused")
        assert manager.store.labels(run_id).set_index("example").loc[0, "label"] == 0
        at = open_page(manager, "audit", run_id)
        at.selectbox(key="audit.example").set_value(5).run()
        assert not at.exception
        history = at.dataframe[1].value
        assert history["why"].iloc[0].startswith("initial label (scalable ICM")
        assert any("fit on the other folds" in m.value for m in at.markdown)
        assert any("What the fold's model reads" in m.value for m in at.markdown)
    finally:
        manager.shutdown()
