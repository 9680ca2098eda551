"""Datasets: loaders build the right groups and keys, gold stays out of what the search sees,
bad tables fail naming row and column, and the bundled samples load and rebuild identically."""
from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import pandas as pd
import pytest

from icm_engine.core.tasks import ConsistencyIndex, builtin_task_names, load_task
from icm_engine.data import datasets as ds
from icm_engine.data import shared_data as sd
from icm_engine.data.base import SENTIMENT_CLAIMS, DatasetError, gsm8k_final_answer
from icm_engine.data.datasets import build_dataset, read_table
from icm_engine.data.sample_builder import build_samples

needs_shared = pytest.mark.skipif(not sd.shared_data_dir().is_dir(), reason="no ../shared/data here")
# words that would give gold away if they showed up in an id (or a model name that predicts it)
TELLS = ("chosen", "rejected", "correct", "true", "false", "gold", "label", "6b", "175b", "good", "bad")


def _groups(dataset) -> dict[str, list[int]]:
    members = defaultdict(list)
    for index, example in enumerate(dataset.examples):
        members[example.group].append(index)
    return members


def _assert_neutral(dataset) -> None:
    """Ids carry no gold words, fields are exactly the task's, and every example has gold."""
    for example in dataset.examples:
        assert not any(word in example.uid.lower() for word in TELLS), example.uid
        assert set(example.fields) == set(dataset.task.fields), example.fields
    assert len({e.uid for e in dataset.examples}) == len(dataset.examples)
    assert sorted(dataset.gold) == list(range(len(dataset.examples)))
    assert set(dataset.gold.values()) <= {0, 1}


# ---- task definitions ------------------------------------------------------------------------


def test_task_defs_ship_and_follow_table_1_style():
    assert {"truthfulqa", "gsm8k_verification", "hh_rlhf_harmless", "sentiment", "sentiment_single"} <= set(
        builtin_task_names())
    rules = {"truthfulqa": "none", "gsm8k_verification": "exclusive", "hh_rlhf_harmless": "asymmetric_pair",
             "sentiment": "complementary", "sentiment_single": "none"}
    for name, rule in rules.items():
        task = load_task(name)
        assert task.rule == rule and task.label_words == (" False", " True")
        assert task.template.endswith("\nI think this Claim is")
    truthfulqa = load_task("truthfulqa")
    assert truthfulqa.key_field is None and truthfulqa.group_field  # grouping without a gold-derived key
    assert load_task("hh_rlhf_harmless").pairwise_fields == ("response_a", "response_b")


# ---- real data ---------------------------------------------------------------------------------


@needs_shared
def test_truthfulqa_groups_by_question_with_no_keys():
    data = sd.load_truthfulqa(limit=6)
    assert data.task.rule == "none" and len(_groups(data)) == 6 and len(data) == 24
    assert all(e.key is None for e in data.examples)
    for members in _groups(data).values():
        assert len({data.examples[i].fields["question"] for i in members}) == 1
    _assert_neutral(data)


@needs_shared
def test_gsm8k_keys_are_parsed_final_answers_and_gold_obeys_the_rule():
    data = sd.load_gsm8k()
    assert len(data) == 2304 and all(len(m) == 4 for m in _groups(data).values())
    for example in data.examples:
        parsed = gsm8k_final_answer(example.fields["solution"])
        assert example.key == (parsed or f"unparsed:{example.uid}")
    assert sum(e.key.startswith("unparsed:") for e in data.examples) == 2  # truncated solutions
    assert "2 of 2304" in data.notes[0]
    # gold is_correct means "final answer matches the reference", so gold never breaks exclusivity
    assert ConsistencyIndex("exclusive", data.examples).inconsistent_pairs(data.gold) == []
    _assert_neutral(data)


@pytest.mark.parametrize("text, answer", [
    ("x\nA: 18", "18"), ("A: 90,000", "90000"), ("A: 18.00", "18"), ("A: $5.", "5"), ("A: 0.50", "0.5"),
    ("A: 1/5", "1/5"), ("A: -1.8 billion", "-1.8 billion"), ("so 2 * 9 = 18\n25", None), ("A:", None),
    ("A: 7\n", "7"),
])
def test_gsm8k_final_answer(text, answer):
    assert gsm8k_final_answer(text) == answer


@needs_shared
def test_hh_pairs_hold_both_orders_with_exactly_one_true():
    data = sd.load_hh_rlhf(limit=40)
    groups = _groups(data)
    assert len(groups) == 40 and len(data) == 80
    for members in groups.values():
        a, b = (data.examples[i] for i in members)
        assert {a.key, b.key} == {"ab", "ba"}
        assert (a.fields["response_a"], a.fields["response_b"]) == (b.fields["response_b"], b.fields["response_a"])
        assert a.fields["prompt"] == b.fields["prompt"] and not a.fields["prompt"].endswith("Assistant:")
        assert sorted(data.gold[i] for i in members) == [0, 1]
    _assert_neutral(data)


@needs_shared
def test_hh_keys_and_positions_do_not_tell_gold():
    data = sd.load_hh_rlhf()
    assert len(_groups(data)) == 2303 and "skipped 9" in data.notes[0]
    ab_true = [data.gold[i] for i, e in enumerate(data.examples) if e.key == "ab"]
    first_true = [data.gold[m[0]] for m in _groups(data).values()]
    assert 0.45 < sum(ab_true) / len(ab_true) < 0.55
    assert 0.45 < sum(first_true) / len(first_true) < 0.55


@needs_shared
@pytest.mark.parametrize("source", ["yelp", "amazon"])
def test_sentiment_complementary_groups(source):
    data = sd.load_sentiment(source, limit=30)
    assert data.task.rule == "complementary" and len(data) == 60
    for members in _groups(data).values():
        claims = [data.examples[i] for i in members]
        assert {c.key for c in claims} == {"positive", "negative"}
        assert {c.fields["claim"] for c in claims} == set(SENTIMENT_CLAIMS.values())
        assert sorted(data.gold[i] for i in members) == [0, 1]
    full = sd.load_sentiment(source)
    first_true = [full.gold[m[0]] for m in _groups(full).values()]
    assert 0.43 < sum(first_true) / len(first_true) < 0.57  # claim order is no tell
    _assert_neutral(data)


@needs_shared
def test_sentiment_single_limit_is_balanced_and_reproducible():
    data = sd.load_sentiment("yelp", single=True, limit=50, seed=3)
    assert data.task.name == "sentiment_single" and len(data) == 50 and sum(data.gold.values()) == 25
    assert sd.load_sentiment("yelp", single=True, limit=50, seed=3).examples == data.examples
    assert sd.load_sentiment("yelp", single=True, limit=50, seed=4).examples != data.examples
    _assert_neutral(data)


def test_sentiment_file_splits_on_newline_only(tmp_path, monkeypatch):
    sentences = "Good food\u2028really.\t1\nAwful\x85 service.\t0\nFine place.\t1\n"
    (tmp_path / "sentiment").mkdir()
    (tmp_path / "sentiment" / "yelp_labelled.txt").write_bytes(sentences.encode("utf-8"))
    monkeypatch.setenv("ICM_SHARED_DATA", str(tmp_path))
    data = sd.load_sentiment("yelp", single=True)
    assert [e.fields["text"] for e in data.examples] == ["Good food\u2028really.", "Awful\x85 service.", "Fine place."]
    assert [data.gold[i] for i in range(3)] == [1, 0, 1]
    (tmp_path / "sentiment" / "yelp_labelled.txt").write_text("Fine.\t1\nNo tab here\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"line 2, column 'label'"):
        sd.load_sentiment("yelp")


# ---- tables ------------------------------------------------------------------------------------


def test_build_dataset_sends_gold_only_to_gold():
    frame = pd.DataFrame({"text": ["nice", "awful"], "label": ["True", "0"], "extra": ["x", "y"]})
    data = build_dataset(frame, "sentiment_single", gold_column="label")
    assert data.gold == {0: 1, 1: 0}
    assert [dict(e.fields) for e in data.examples] == [{"text": "nice"}, {"text": "awful"}]
    assert [e.uid for e in data.examples] == ["uploaded-00001", "uploaded-00002"]
    with pytest.raises(DatasetError, match="column 'label'"):
        build_dataset(frame, "sentiment_single", columns={"text": "label"}, gold_column="label")


@pytest.mark.parametrize("frame, kwargs, message", [
    (pd.DataFrame({"txt": ["a"]}), {}, r"column 'text': no such column"),
    (pd.DataFrame({"text": ["a", " "]}), {}, r"row 2, column 'text': empty value"),
    (pd.DataFrame({"text": ["a", None, "c"]}), {}, r"row 2, column 'text': empty value"),
    (pd.DataFrame({"text": ["a", "b", float("nan")]}), {}, r"row 3, column 'text': empty value"),
    (pd.DataFrame({"text": ["a", "b", "c"], "g": [1, 0, "yes"]}), {"gold_column": "g"}, r"row 3, column 'g': gold must"),
    (pd.DataFrame({"text": ["a", "b"], "g": [1, 2]}), {"gold_column": "g"}, r"row 2, column 'g': gold must"),
    (pd.DataFrame({"text": ["a", "b"], "id": ["x", "x"]}), {"id_column": "id"}, r"row 2, column 'id'"),
])
def test_build_dataset_errors_name_row_and_column(frame, kwargs, message):
    with pytest.raises(DatasetError, match=message):
        build_dataset(frame, "sentiment_single", **kwargs)


def test_rules_need_their_group_and_key_columns():
    frame = pd.DataFrame({"question": ["q"] * 3, "solution": ["A: 1", "A: 2", "A: 1"], "group": ["g", "g", ""]})
    with pytest.raises(DatasetError, match="needs a group column"):
        build_dataset(frame, "gsm8k_verification")
    with pytest.raises(DatasetError, match=r"row 3, column 'group'"):
        build_dataset(frame, "gsm8k_verification", group_column="group")
    data = build_dataset(frame.iloc[:2], "gsm8k_verification", group_column="group")  # keys derived
    assert [e.key for e in data.examples] == ["1", "2"] and data.gold is None
    pairs = pd.DataFrame({"prompt": ["p"] * 3, "response_a": ["x"] * 3, "response_b": ["y"] * 3,
                          "group": ["g"] * 3, "key": ["ab", "ba", "ab"]})
    with pytest.raises(DatasetError, match=r"row 3, column 'group'.*exactly two"):
        build_dataset(pairs, "hh_rlhf_harmless", group_column="group", key_column="key")


def test_read_table_formats_and_line_numbers(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["NA", "fine"], "gold": [1, 0]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text(frame.to_json(orient="records"))
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")) + "\n")
    for suffix in ("csv", "parquet", "json", "jsonl"):
        loaded = ds.load_any(str(tmp_path / f"t.{suffix}"), task="sentiment_single")
        assert [e.fields["text"] for e in loaded.examples] == ["NA", "fine"], suffix  # "NA" is text
        assert loaded.gold == {0: 1, 1: 0} and [e.uid for e in loaded.examples] == ["a", "b"]
    upload = io.BytesIO(b'{"text": "ok", "gold": 1}\n\n{"text": "", "gold": 0}\n')
    upload.name = "upload.jsonl"
    with pytest.raises(DatasetError, match=r"line 3, column 'text'"):
        ds.dataset_from_table(read_table(upload), "sentiment_single")
    with pytest.raises(DatasetError, match=r"line 2: not valid JSON"):
        read_table(io.BytesIO(b'{"text": "ok"}\n{oops\n'), fmt="jsonl")
    with pytest.raises(DatasetError, match="cannot tell the format"):
        read_table(io.BytesIO(b"x"))


def test_uploaded_sentences_expand_for_the_complementary_task():
    frame = pd.DataFrame({"id": ["s1", "s2"], "text": ["great", "awful"], "label": ["true", "false"]})
    data = ds.dataset_from_table(frame, "sentiment")
    assert len(data) == 4 and {e.group for e in data.examples} == {"s1", "s2"}
    truths = {(e.group, e.key) for i, e in enumerate(data.examples) if data.gold[i]}
    assert truths == {("s1", "positive"), ("s2", "negative")}
    assert ds.dataset_from_table(frame[["text"]], "sentiment").gold is None
    frame.loc[1, "id"] = "s1"
    with pytest.raises(DatasetError, match=r"row 2, column 'id'"):
        ds.dataset_from_table(frame, "sentiment")


# ---- samples and load_any ------------------------------------------------------------------------


def test_samples_load_and_match_their_tasks():
    sizes = {"sentiment_yelp": (200, 200), "truthfulqa": (256, 64), "gsm8k_verification": (192, 48),
             "hh_rlhf_harmless": (128, 64)}
    assert ds.list_samples() == sorted(sizes)
    for name, (examples, groups) in sizes.items():
        data = ds.load_sample(name)
        group_count = len(_groups(data)) if data.task.group_field else len(data)  # ungrouped: each its own group
        assert data.task.name == ds.SAMPLES[name][1] and (len(data), group_count) == (examples, groups)
        assert data.attribution and (ds.SAMPLE_DIR / ds.SAMPLES[name][0]).stat().st_size < 300_000
        if data.task.rule != "none":
            assert ConsistencyIndex(data.task.rule, data.examples).inconsistent_pairs(data.gold) == []
        _assert_neutral(data)
    assert sum(ds.load_sample("sentiment_yelp").gold.values()) == 100
    claims = ds.load_sample("sentiment_yelp", task="sentiment")  # two complementary claims a sentence
    assert (len(claims), len(_groups(claims)), sum(claims.gold.values())) == (400, 200, 200)
    assert ConsistencyIndex(claims.task.rule, claims.examples).inconsistent_pairs(claims.gold) == []
    for license_file in ("gsm8k_verification.LICENSE", "hh_rlhf_harmless.LICENSE", "README.md"):
        assert (ds.SAMPLE_DIR / license_file).is_file()


@needs_shared
def test_samples_rebuild_byte_identical(tmp_path):
    for path in build_samples(tmp_path):
        assert path.read_bytes() == (ds.SAMPLE_DIR / path.name).read_bytes(), path.name
    assert ds.load_sample("hh_rlhf_harmless").examples == sd.load_hh_rlhf(limit=64).examples


@needs_shared
def test_load_any_specs(tmp_path):
    assert ds.load_any("shared:yelp", task="sentiment_single", limit=10).task.name == "sentiment_single"
    assert ds.load_any("shared:amazon", limit=10).task.rule == "complementary"
    assert len(ds.load_any("shared:truthfulqa", limit=3)) == 12
    assert len(ds.load_any("sample:gsm8k_verification", limit=3)) == 12
    assert Counter(e.key for e in ds.load_any("shared:hh_rlhf", limit=2).examples) == {"ab": 2, "ba": 2}
    with pytest.raises(ValueError, match="not 'truthfulqa'"):
        ds.load_any("shared:gsm8k", task="truthfulqa", limit=2)
    with pytest.raises(ValueError, match="needs a task"):
        ds.load_any(str(tmp_path / "t.csv"))
    with pytest.raises(KeyError):
        ds.load_any("sample:nope")
