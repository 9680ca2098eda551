"""The evaluation harness on the fake model: each row's demonstrations carry the right labels,
the split keeps groups whole, no test example is ever a demonstration, gold never reaches the
search, results land in the store with their config, and the chart builds."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from icm_engine.backends.base import LanguageModel
from icm_engine.backends.fake import FakeLM
from icm_engine.cli import eval as eval_cli
from icm_engine.cli import evals as evals_cli
from icm_engine.core.config import LearnerConfig, RunConfig, SearchConfig
from icm_engine.core.prompts import demo_prefix
from icm_engine.data.base import LoadedDataset
from icm_engine.evaluation.comparison_tables import (
    accuracy_figure, format_label_table, format_table, summarize, summarize_labels, table_rows, write_figure,
)
from icm_engine.evaluation.combine import comparable
from icm_engine.evaluation.comparison import (
    DECISION_RULE, DEFAULT_METHODS, GOLD, ICM, LABEL_TABLE, NO_CONSISTENCY, PERTURBED, RANDOM_LABELS, SELF_LABELS,
    TEST_TABLE, ZERO_SHOT, ZERO_SHOT_LABELS, EvalConfig, all_methods, decide, evaluate, fit_demo_count,
    icm_variants, perturb_to_match, split_by_group,
)
from icm_engine.core.search import Search
from icm_engine.runs.runner import make_scorer
from icm_engine.store.database import Store, StoreError
from tests.fakes import PAIRED, SINGLE, PolarityStates, polarity_examples


class Recording(LanguageModel):
    """Wraps a backend and keeps every query it is asked, to inspect what prompts held."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner, self.queries = inner, []
        self.name, self.revision, self.stats = inner.name, inner.revision, inner.stats

    def label_logprobs(self, queries):
        self.queries += list(queries)
        return self.inner.label_logprobs(queries)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    @property
    def context_window(self):
        return self.inner.context_window


def dataset(n=30, paired=True, seed=3) -> LoadedDataset:
    """Polarity reviews made unique by a neutral tag, so a prompt's text names its example.

    Every third review is made ambiguous to the fake model (one positive and one negative word,
    gold kept), so ICM gets some labels wrong and the perturbed control has something to match.
    """
    examples, gold = polarity_examples(n, seed=seed, paired=paired)
    unique = []
    for e in examples:
        review = int((e.group or e.uid)[1:])
        text = "good bad food" if review % 3 == 2 else e.fields["text"]
        unique.append(replace(e, fields={**e.fields, "text": f"{text} item {e.group or e.uid}"}))
    return LoadedDataset("polarity", PAIRED if paired else SINGLE, unique, gold, "memory")


CONFIG = EvalConfig(task="polarity_pairs", data="memory", search_size=8, test_size=12, seeds=(0, 1), steps=24,
                    search=SearchConfig(k_init=4))


@pytest.fixture(scope="module")
def run():
    data = dataset()
    backend = Recording(FakeLM(strength=6))
    return data, backend, evaluate(data, backend, replace(CONFIG, methods=all_methods()))


def _test_rows(result):
    return table_rows(result.rows, TEST_TABLE)


def _test_rows_frame(rows):
    return table_rows(rows, TEST_TABLE)


def _label_rows(result):
    return table_rows(result.rows, LABEL_TABLE)


def by_uid(data):
    return {e.uid: i for i, e in enumerate(data.examples)}


# ---- the split --------------------------------------------------------------------------


def test_split_keeps_groups_whole_and_apart():
    data = dataset(n=30)
    split = split_by_group(data.examples, 8, 12, seed=5)
    search_groups = {data.examples[i].group for i in split.search}
    test_groups = {data.examples[i].group for i in split.test}
    assert len(search_groups) == 8 and len(test_groups) == 12 and not search_groups & test_groups
    assert len(split.search) == 16 and len(split.test) == 24  # every group brought both its claims
    assert split_by_group(data.examples, 8, 12, seed=5) == split  # seeded
    assert split_by_group(data.examples, 8, 12, seed=6) != split


def test_split_by_examples_takes_whole_groups_within_the_size():
    data = dataset(n=30)
    split = split_by_group(data.examples, 7, 10, unit="examples")
    assert len(split.search) == 6 and len(split.test) == 10
    assert not {data.examples[i].group for i in split.search} & {data.examples[i].group for i in split.test}


def test_split_refuses_sizes_the_data_cannot_give():
    with pytest.raises(ValueError, match="too few"):
        split_by_group(dataset(n=10).examples, 8, 5)


# ---- building blocks --------------------------------------------------------------------


def test_perturbation_has_exactly_the_reference_accuracy():
    rng = np.random.default_rng(0)
    gold = [int(x) for x in rng.integers(0, 2, size=50)]
    reference = [1 - g if k % 5 == 0 else g for k, g in enumerate(gold)]  # 10 wrong
    perturbed = perturb_to_match(gold, reference, rng)
    assert sum(p != g for p, g in zip(perturbed, gold)) == 10
    assert perturbed != reference  # random positions, not a copy of the reference


def test_demo_count_fits_the_context_and_the_cap():
    data = dataset(n=10, paired=False)
    pool, tests = data.examples[:8], data.examples[8:]
    roomy = FakeLM()
    assert fit_demo_count(roomy, SINGLE, pool, tests) == 8
    assert fit_demo_count(roomy, SINGLE, pool, tests, max_demos=3) == 3
    tight = FakeLM(context_window=40)
    count = fit_demo_count(tight, SINGLE, pool, tests)
    longest = max(tight.count_tokens(SINGLE.render_query(e)) for e in tests)
    prefix = demo_prefix(SINGLE, pool[:count], [0] * count)
    assert 0 < count < 8 and 1 + sum(map(tight.count_tokens, prefix)) + longest <= 40


# ---- each row from the right labels -----------------------------------------------------


def test_every_method_and_seed_has_a_row(run):
    data, _, result = run
    rows = _test_rows(result)
    assert list(rows[rows["method"] == ZERO_SHOT]["seed"].isna()) == [True]  # deterministic: run once
    for method in all_methods():
        if method != ZERO_SHOT:
            assert sorted(rows[rows["method"] == method]["seed"]) == [0, 1]
    test_gold = np.array([data.gold[i] for i in result.split.test])
    for _, row in rows.iterrows():
        assert row["n_test"] == len(result.split.test)
        assert row["accuracy"] == pytest.approx(np.mean(np.array(row["predictions"]) == test_gold))
    labels = _label_rows(result)
    for method in [*icm_variants(), RANDOM_LABELS]:
        assert sorted(labels[labels["method"] == method]["seed"]) == [0, 1]
    for method in (ZERO_SHOT_LABELS, SELF_LABELS):  # deterministic: labeled once
        assert list(labels[labels["method"] == method]["seed"].isna()) == [True]


def test_the_label_table_scores_every_exported_label_on_the_whole_search_split(run):
    data, _, result = run
    gold = [data.gold[i] for i in result.split.search]
    for _, row in _label_rows(result).iterrows():
        assert len(row["labels"]) == row["n_test"] == len(result.split.search)
        assert row["coverage"] == 1.0 and None not in row["labels"]  # ICM rows too: the final pass labels the rest
        assert row["accuracy"] == pytest.approx(np.mean([y == g for y, g in zip(row["labels"], gold)]))
        if row["method"].startswith("icm"):
            assert 0 < row["search_share"] <= 1 and row["iterations_per_example"] > 0
            assert 0 < row["search_share_at_4n"] <= row["search_share"]
    icm = _label_rows(result)[_label_rows(result)["method"] == ICM]
    assert all(max(a, 1 - a) >= 0.7 for a in icm["accuracy"])  # the concept, up to its orientation
    summary = summarize_labels(result.rows)
    assert set(summary["method"]) == set(_label_rows(result)["method"]) and "label accuracy" in format_label_table(summary)


def test_zero_shot_labels_use_the_decision_rule_on_the_query_alone(run):
    data, backend, result = run
    search = [data.examples[i] for i in result.split.search]
    fresh = FakeLM(strength=6)
    from icm_engine.evaluation.baselines import label_log_odds

    expected = decide(label_log_odds(fresh, data.task, (), search), CONFIG.decision).tolist()
    row = _label_rows(result)[_label_rows(result)["method"] == ZERO_SHOT_LABELS].iloc[0]
    assert row["labels"] == expected


def test_rows_of_a_seed_share_their_demonstrations_the_whole_search_split(run):
    _, _, result = run
    for seed, part in _test_rows(result).dropna(subset=["seed"]).groupby("seed"):
        assert len({tuple(u) for u in part["demo_uids"]}) == 1
        assert part["n_demos"].nunique() == 1 and part["n_demos"].iloc[0] == len(result.split.search)


def test_the_evaluation_stops_at_zero_demonstrations():
    data = dataset()
    with pytest.raises(ValueError, match="0 demonstrations"):
        evaluate(data, FakeLM(strength=6, context_window=12), replace(CONFIG, seeds=(0,), methods=(ZERO_SHOT, GOLD)))


def test_gold_row_shows_gold_labels(run):
    data, _, result = run
    index = by_uid(data)
    for _, row in result.rows[result.rows["method"] == GOLD].iterrows():
        assert row["demo_labels"] == [data.gold[index[u]] for u in row["demo_uids"]]
        assert row["demo_accuracy"] == 1.0


def test_perturbed_row_has_exactly_the_icm_rows_accuracy(run):
    data, _, result = run
    index = by_uid(data)
    rows = _test_rows(result)
    partial = 0
    for seed in (0, 1):
        icm = rows[(rows["method"] == ICM) & (rows["seed"] == seed)].iloc[0]
        perturbed = rows[(rows["method"] == PERTURBED) & (rows["seed"] == seed)].iloc[0]
        gold = [data.gold[index[u]] for u in perturbed["demo_uids"]]
        icm_wrong = sum(y != g for y, g in zip(icm["demo_labels"], gold))
        assert sum(y != g for y, g in zip(perturbed["demo_labels"], gold)) == icm_wrong
        assert perturbed["demo_accuracy"] == icm["demo_accuracy"] == pytest.approx(1 - icm_wrong / len(gold))
        partial += 0 < icm_wrong < len(gold)
    assert partial, "the fixture should give ICM some but not all demonstrations wrong"


def test_icm_rows_show_the_labels_their_search_produced(run):
    data, _, result = run
    search_examples = [data.examples[i] for i in result.split.search]
    test_rows = _test_rows(result)
    for _, row in _label_rows(result)[_label_rows(result)["method"].str.startswith("icm")].iterrows():
        # Rerun the search independently, from the row's stored config, on the search split only.
        config = SearchConfig(**row["search_config"])
        search = Search(make_scorer(FakeLM(strength=6), data.task, search_examples,
                                    RunConfig(task=data.task.name, dataset="x", search=config)), config)
        while not search.done:
            search.step()
        labels = {search_examples[k].uid: y for k, y in search.label_map().items()}
        assert labels == result.icm_labels[(row["method"], row["seed"])]
        test_row = test_rows[(test_rows["method"] == row["method"]) & (test_rows["seed"] == row["seed"])].iloc[0]
        assert test_row["demo_labels"] == [labels[u] for u in test_row["demo_uids"]]
        assert row["accuracy"] == pytest.approx(np.mean([y == data.gold[by_uid(data)[u]] for u, y in labels.items()]))
    rows = _label_rows(result)
    ablation = rows[rows["method"] == NO_CONSISTENCY]
    assert all(not SearchConfig(**c).use_consistency for c in ablation["search_config"])
    for objective in ("sum", "chance", "mean"):
        part = rows[rows["method"] == f"icm_{objective}_centered"]
        assert len(part) and all(SearchConfig(**c).calibration == "centered" and SearchConfig(**c).objective == objective
                                 for c in part["search_config"])


# ---- honesty ----------------------------------------------------------------------------


def test_prompts_carry_the_rows_labels_and_never_a_test_example(run):
    data, backend, result = run
    test_texts = {data.task.render_query(data.examples[i]) for i in result.split.test}
    search_texts = {data.task.render_query(data.examples[i]) for i in result.split.search}
    for query in backend.queries:
        assert not test_texts & set(query.segments[:-1]), "a test example was shown as a demonstration"
        assert set(query.segments[:-1:2]) <= search_texts
    prompts = [q.segments for q in backend.queries]
    index = by_uid(data)
    for _, row in _test_rows(result).iterrows():
        prefix = demo_prefix(data.task, [data.examples[index[u]] for u in row["demo_uids"]], row["demo_labels"])
        asked = [p for p in prompts if p[:-1] == prefix and p[-1] in test_texts]
        assert len(asked) >= row["n_test"]  # the prompts really held these labels


def test_search_results_do_not_depend_on_gold():
    data = dataset()
    flipped = LoadedDataset(data.name, data.task, data.examples, {i: 1 - y for i, y in data.gold.items()}, data.source)
    config = replace(CONFIG, seeds=(0,), methods=(ICM, "icm_sum_centered"))
    assert evaluate(data, FakeLM(strength=6), config).icm_labels == evaluate(flipped, FakeLM(strength=6), config).icm_labels


def test_a_subset_of_methods_and_a_task_without_rule():
    data = dataset(n=30, paired=False)
    config = replace(CONFIG, task="polarity", seeds=(0,), methods=(GOLD, NO_CONSISTENCY, PERTURBED))
    result = evaluate(data, FakeLM(strength=6), config)
    assert list(_test_rows(result)["method"]) == [GOLD, NO_CONSISTENCY, PERTURBED]  # icm ran for the control
    # No rule: the ablation is the same search as icm, reused rather than rerun.
    assert result.icm_labels[(NO_CONSISTENCY, 0)] == result.icm_labels[(ICM, 0)]


def test_evaluation_needs_gold():
    data = dataset()
    with pytest.raises(ValueError, match="gold"):
        evaluate(LoadedDataset(data.name, data.task, data.examples, None, ""), FakeLM(), CONFIG)


# ---- store, report, CLI -----------------------------------------------------------------


def test_results_and_config_are_stored_and_the_figure_builds(run, tmp_path):
    _, _, result = run
    with Store(":memory:") as store:
        eval_id = result.save(store, "fake comparison")
        listed = store.evals()
        rows = store.eval_rows(eval_id)
    assert list(listed["name"]) == ["fake comparison"]
    assert DECISION_RULE in listed["config_json"].iloc[0] and '"seeds": [0, 1]' in listed["config_json"].iloc[0]
    assert list(rows["method"]) == list(result.rows["method"])
    assert np.allclose(rows["accuracy"], result.rows["accuracy"])
    assert _test_rows_frame(rows)["demo_labels"].tolist() == _test_rows(result)["demo_labels"].tolist()
    assert table_rows(rows, LABEL_TABLE)["labels"].tolist() == _label_rows(result)["labels"].tolist()
    summary = summarize(rows)
    assert list(summary["method"])[:3] == [ZERO_SHOT, GOLD, ICM]
    assert "centered acc" in format_table(summary) and "argmax acc" in format_table(summary)
    fig = accuracy_figure(rows)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.name for b in bars] == ["decision: centered", "decision: argmax"]  # both rules side by side
    assert all(len(b.x) == len(all_methods()) - 1 for b in bars)  # zero-shot is a line, not a bar
    written, _ = write_figure(fig, tmp_path / "chart.html")
    assert written[0].stat().st_size > 1000


def _reviews_and_eval_parser(tmp_path, n: int, seed: int):
    """A CSV of n polarity reviews with a gold column, and a parser that knows `eval`."""
    examples, gold = polarity_examples(n, seed=seed)
    table = tmp_path / "reviews.csv"
    pd.DataFrame({"text": [f"{e.fields['text']} item {k}" for k, e in enumerate(examples)],
                  "gold": [gold[k] for k in range(len(examples))]}).to_csv(table, index=False)
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    return table, parser


def test_cli_on_an_uploaded_table_with_a_gold_column(tmp_path, capsys):
    table, parser = _reviews_and_eval_parser(tmp_path, 24, seed=2)
    db, out = tmp_path / "icm.duckdb", tmp_path / "fig.html"
    args = parser.parse_args(["eval", "--task", "sentiment", "--data", str(table), "--search-size", "6", "--test-size", "8",
                              "--steps", "12", "--seeds", "2", "--db", str(db), "--out", str(out)])
    assert eval_cli.run(args, backend=FakeLM(strength=6)) == 0
    printed = capsys.readouterr().out
    assert "decision rule: " + DECISION_RULE in printed and "wall time" in printed and "perturbed" in printed
    assert out.exists()
    with Store(str(db)) as store:
        rows = store.eval_rows(int(store.evals()["eval_id"].iloc[0]))
    # test table: zero-shot once, every other default method per seed; label table: the deterministic
    # labelers once, ICM rows and random labels per seed
    assert len(table_rows(rows, TEST_TABLE)) == 1 + (len(DEFAULT_METHODS) - 1) * 2
    assert len(table_rows(rows, LABEL_TABLE)) == 2 + 3 * 2
    assert "label accuracy" in printed


def test_cli_eval_reports_progress_from_start_to_end_as_lines_in_a_log(tmp_path, capsys):
    table, parser = _reviews_and_eval_parser(tmp_path, 16, seed=3)
    args = parser.parse_args(["eval", "--task", "sentiment", "--data", str(table), "--search-size", "6", "--test-size", "8",
                              "--steps", "12", "--seeds", "2", "--db", str(tmp_path / "icm.duckdb"),
                              "--out", str(tmp_path / "fig.html"), "--finetune", "head"])
    assert eval_cli.run(args, backend=PolarityStates(strength=6)) == 0
    lines = capsys.readouterr().err.splitlines()
    overall = [line for line in lines if line.startswith("[progress] evaluation: ")]
    assert overall[0].startswith("[progress] evaluation: 0/") and "(0%)" in overall[0]
    total = int(overall[0].split(": ")[1].split("/")[1].split(" ")[0])
    assert overall[-1].startswith(f"[progress] evaluation: {total}/{total} (100%)")
    # every job's own progress: the baselines, each seed's search, test rows and fine-tunings
    for stage in ("test zero_shot", "zero-shot labels", "self-labeling rounds", "search 'icm': labeled", "test gold (seed 1)",
                  "finetune head on icm (seed 0)"):
        assert any(line.startswith(f"[progress] {stage}: ") for line in lines), stage


def test_cli_keeps_each_finished_seed_when_a_later_one_fails(tmp_path, capsys):
    """Nothing lost: seed 0's rows are in the database before seed 1's searches start."""
    examples, gold = polarity_examples(24, seed=2)
    table = tmp_path / "reviews.csv"
    pd.DataFrame({"text": [f"{e.fields['text']} item {k}" for k, e in enumerate(examples)],
                  "gold": [gold[k] for k in range(len(examples))]}).to_csv(table, index=False)

    class FailsLater(FakeLM):
        calls = 0

        def label_logprobs(self, queries):
            FailsLater.calls += 1
            if FailsLater.calls > budget:
                raise RuntimeError("killed")
            return super().label_logprobs(queries)

    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    argv = ["eval", "--task", "sentiment", "--data", str(table), "--search-size", "6", "--test-size", "8",
            "--steps", "12", "--seeds", "2", "--out", str(tmp_path / "fig.html")]
    budget = 10**9
    assert eval_cli.run(parser.parse_args(argv + ["--db", str(tmp_path / "full.duckdb")]), backend=FailsLater(strength=6)) == 0
    calls_for_two_seeds, FailsLater.calls = FailsLater.calls, 0
    budget = calls_for_two_seeds * 3 // 4  # dies inside seed 1
    with pytest.raises(RuntimeError, match="killed"):
        eval_cli.run(parser.parse_args(argv + ["--db", str(tmp_path / "cut.duckdb")]), backend=FailsLater(strength=6))
    with Store(str(tmp_path / "full.duckdb")) as store:
        full = store.eval_rows(int(store.evals()["eval_id"].iloc[0]))
        assert json.loads(store.evals()["config_json"].iloc[0])["complete"] is True
    with Store(str(tmp_path / "cut.duckdb")) as store:
        evals = store.evals()
        assert len(evals) == 1 and json.loads(evals["config_json"].iloc[0])["seeds_done"] == [0]
        cut = store.eval_rows(int(evals["eval_id"].iloc[0]))
    assert set(cut["seed"].dropna()) == {0} and len(cut) == 3 + 3 + (len(DEFAULT_METHODS) - 1)
    assert cut["accuracy"].tolist() == full["accuracy"].tolist()[: len(cut)]
    # `icm evals` prints what the cut evaluation kept
    show = argparse.ArgumentParser()
    evals_cli.add_parser(show.add_subparsers(dest="command"))
    assert evals_cli.run(show.parse_args(["evals", "--db", str(tmp_path / "cut.duckdb"), "--eval", "1"])) == 0
    printed = capsys.readouterr().out
    assert "cut short" in printed and "label table" in printed and "self_labels" in printed and "gold" in printed


def test_evals_combine_pools_seeds_run_apart_and_refuses_what_does_not_fit(tmp_path, capsys):
    """Seeds run in separate processes land in separate files (DuckDB: one writer a file); pooled,
    they give the tables one run over all seeds gives, and nothing else may differ."""
    examples, gold = polarity_examples(24, seed=2)
    table = tmp_path / "reviews.csv"
    pd.DataFrame({"text": [f"{e.fields['text']} item {k}" for k, e in enumerate(examples)],
                  "gold": [gold[k] for k in range(len(examples))]}).to_csv(table, index=False)
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    eval_cli.add_parser(subparsers)
    evals_cli.add_parser(subparsers)

    def evaluate_into(name: str, seeds: str, *more: str) -> str:
        db = str(tmp_path / f"{name}.duckdb")
        argv = ["eval", "--task", "sentiment", "--data", str(table), "--search-size", "6", "--test-size", "8",
                "--steps", "12", "--seeds", seeds, "--db", db, "--out", str(tmp_path / f"{name}.html"), *more]
        assert eval_cli.run(parser.parse_args(argv), backend=FakeLM(strength=6)) == 0
        return db

    together, first, second = evaluate_into("both", "0,1"), evaluate_into("s0", "0,"), evaluate_into("s1", "1,")
    capsys.readouterr()
    assert evals_cli.run(parser.parse_args(["evals", "--db", together, "--eval", "1"])) == 0
    whole = capsys.readouterr().out
    assert evals_cli.run(parser.parse_args(["evals", "--combine", first, second])) == 0
    pooled = capsys.readouterr().out
    assert "2 evaluations from 2 files" in pooled and "seeds [0, 1]" in pooled
    assert pooled.split("label table", 1)[1] == whole.split("label table", 1)[1]  # the same tables, line for line

    config = {"dataset": {"task": {"template": "{text}", "description": "old words"}}, "search": {"seed": 0}}
    reworded = {"dataset": {"task": {"template": "{text}", "description": "new words"}}, "search": {"seed": 1}}
    assert comparable(config) == comparable(reworded)  # a reworded description or another seed still pools
    assert comparable(config) != comparable({**reworded, "dataset": {"task": {"template": "Review: {text}"}}})
    other = evaluate_into("other", "2,", "--alpha", "3")
    for files, said in (([first, other], f"{other} evaluation 1 differs from {first} evaluation 1 in search"),
                        ([first, together], f"{together} evaluation 1: icm (labels table) seed 0 is also in {first}")):
        with pytest.raises(SystemExit) as refused:
            evals_cli.run(parser.parse_args(["evals", "--combine", *files]))
        assert str(refused.value).startswith(said)
    with pytest.raises(StoreError, match="typo.duckdb: no such database"):  # the entry point prints it in one line
        evals_cli.run(parser.parse_args(["evals", "--combine", first, str(tmp_path / "typo.duckdb")]))
    assert not (tmp_path / "typo.duckdb").exists()


def test_cli_rejects_unknown_methods():
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--methods", "gold,oracle"])


@pytest.mark.slow
def test_cli_with_a_real_tiny_model_keeps_every_prompt_inside_its_context(tmp_path, monkeypatch):
    """The --model path end to end on a tiny random Llama and a short context: demonstrations
    are cut to fit the longest test query, the same count for every row, nothing truncated."""
    from icm_engine.runs import models
    from tests.tiny_model import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    loaded: list[Recording] = []
    real_load = models.load_model

    def recording_load(*args, **kwargs):
        loaded.append(Recording(real_load(*args, **kwargs)))
        return loaded[-1]

    monkeypatch.setattr(models, "load_model", recording_load)
    parser = argparse.ArgumentParser()
    eval_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "--task", "sentiment", "--data", "sample:sentiment_yelp", "--search-size", "4",
                              "--test-size", "2", "--steps", "2", "--seeds", "1", "--methods", "zero_shot,gold,icm", "--model", str(model_dir),
                              "--device", "cpu", "--max-context", "160", "--db", str(tmp_path / "db.duckdb"),
                              "--out", str(tmp_path / "fig.html")])
    assert eval_cli.run(args) == 0
    backend = loaded[0]
    assert backend.context_window == 160
    for query in backend.queries:
        assert 1 + sum(backend.count_tokens(s) for s in query.segments) <= 160
    with Store(str(tmp_path / "db.duckdb")) as store:
        rows = store.eval_rows(1)
    rows = table_rows(rows, TEST_TABLE)
    many_shot = rows[rows["method"] != ZERO_SHOT]
    assert many_shot["n_demos"].nunique() == 1 and 0 < many_shot["n_demos"].iloc[0] < 8  # cut by the context


def test_centered_decision_removes_a_constant_lean_and_rows_record_both_rules():
    from icm_engine.evaluation.comparison import DECISION_RULES

    # A model that says True to everything, more strongly for the true claims: argmax sees only the lean.
    gold = np.array([1, 0, 1, 0, 1, 0])
    log_odds = np.where(gold == 1, 3.0, 1.0)
    assert decide(log_odds, "argmax").tolist() == [1] * 6
    assert decide(log_odds, "centered").tolist() == gold.tolist()
    assert decide(np.zeros(3), "argmax").tolist() == [0, 0, 0]  # a tie goes to the first label word
    with pytest.raises(ValueError):
        EvalConfig(task="x", data="y", decision="vote")
    assert EvalConfig(task="x", data="y", decision="argmax").decision_rule == DECISION_RULES["argmax"]


def test_the_finetuning_table_trains_on_each_methods_labels_and_tests_on_the_test_split(tmp_path, capsys):
    from icm_engine.evaluation.comparison_tables import summarize_finetune
    from icm_engine.evaluation.finetune_table import FINETUNE_TABLE

    data = dataset(n=40, paired=False)
    config = replace(CONFIG, task="polarity", search_size=16, test_size=20, seeds=(0, 1), finetune=("head",),
                     learner=LearnerConfig(l2=1.0),
                     methods=(ZERO_SHOT, GOLD, ICM, RANDOM_LABELS))
    result = evaluate(data, PolarityStates(strength=0), config)  # no zero-shot reading: the head learns it all
    tuned = table_rows(result.rows, FINETUNE_TABLE)
    assert sorted(set(tuned["method"])) == [GOLD, ICM, RANDOM_LABELS] and set(tuned["learner"]) == {"head"}
    assert len(tuned) == 3 * 2 and (tuned["n_train"] == 16).all() and (tuned["n_test"] == 20).all()
    summary = summarize_finetune(result.rows).set_index("method")
    # a third of the reviews read "good bad food" (no polarity): the ceiling is about 0.83
    assert summary.loc[GOLD, "mean"] >= 0.75 and summary.loc[GOLD, "mean"] > summary.loc[RANDOM_LABELS, "mean"] + 0.1
    assert all(len(curve) >= 1 for curve in tuned["loss_curve"])
