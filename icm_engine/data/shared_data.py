"""Real, gold-labelled data from ../shared/data: TruthfulQA claims, GSM8K-verification,
HH-RLHF harmlessness pairs and UCI sentiment sentences, each turned into a LoadedDataset.

The folder defaults to ../shared/data beside the checkout (override with ICM_SHARED_DATA or a
`path` argument); its README gives sources and licenses. The builders keep gold out of what the
search sees, as data/datasets.py explains.
"""
from __future__ import annotations

import gzip
import json
import os
from itertools import zip_longest
from pathlib import Path

from ..core.tasks import Example, load_task
from .base import (
    ATTRIBUTION, DatasetError, LoadedDataset, gold_value, gsm8k_final_answer, read_jsonl, seeded_rng, sentiment_claims,
)

# The project's checkout sits beside ../shared (developers' machines and CI alike).
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

SENTIMENT_FILES = {"yelp": "sentiment/yelp_labelled.txt", "amazon": "sentiment/amazon_cells_labelled.txt"}

GSM8K_SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
HH_ASSISTANT = "\n\nAssistant:"

def shared_data_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("ICM_SHARED_DATA") or DEFAULT_SHARED_DATA)


def _data_file(path, relative: str) -> Path:
    """A builder's `path` may be the data folder or the file itself."""
    base = shared_data_dir(path)
    file = base / relative if base.is_dir() else base
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found (set ICM_SHARED_DATA or pass path=)")
    return file


def _require(record: dict, columns, **where) -> None:
    for column in (c for c in columns if c not in record):
        raise DatasetError("missing", column=column, **where)


def _choose(count: int, limit: int | None, seed: int, strata: list | None = None) -> list[int]:
    """Indices of `limit` of `count` groups, in source order; split evenly across strata if given."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    pools: dict = {}
    for index, stratum in enumerate(strata or [None] * count):
        pools.setdefault(stratum, []).append(index)
    rng = seeded_rng("choose", seed)
    for stratum in sorted(pools):
        rng.shuffle(pools[stratum])
    # deal round-robin from the shuffled strata: as balanced as their sizes allow
    dealt = [i for batch in zip_longest(*(pools[s] for s in sorted(pools))) for i in batch if i is not None]
    return sorted(dealt[:limit])


def _labelled(name: str, task: str, labelled: list[tuple[Example, int]], file, attribution: str, notes=()):
    """A LoadedDataset from (example, gold) pairs in dataset order."""
    gold = {index: label for index, (_, label) in enumerate(labelled)}
    examples = [example for example, _ in labelled]
    return LoadedDataset(name, load_task(task), examples, gold, str(file), ATTRIBUTION[attribution], list(notes))


def load_truthfulqa(path=None, limit: int | None = None, seed: int = 0) -> LoadedDataset:
    """TruthfulQA claims, one group per question; rule none (no input-only rule exists)."""
    file = _data_file(path, "truthfulqa/train_truthfulqa.json")
    groups: dict[str, list[tuple[dict, int]]] = {}
    for n, record in enumerate(json.loads(file.read_text(encoding="utf-8")), 1):
        _require(record, ("question", "choice", "label", "consistency_id"), row=n)
        label = gold_value(record["label"])
        if label is None:
            raise DatasetError(f"label must be 0 or 1, got {record['label']!r}", row=n, column="label")
        groups.setdefault(str(record["consistency_id"]), []).append((record, label))
    labelled, ids = [], list(groups)
    for gid in (ids[i] for i in _choose(len(ids), limit, seed)):
        claims = groups[gid][:]
        seeded_rng("truthfulqa", seed, gid).shuffle(claims)  # the source lists a question's true claims first
        for j, (record, label) in enumerate(claims):
            fields = {"question": record["question"], "choice": record["choice"]}
            labelled.append((Example(f"truthfulqa-q{gid}-c{j}", fields, group=f"q{gid}"), label))
    return _labelled("truthfulqa", "truthfulqa", labelled, file, "truthfulqa")


def load_gsm8k(path=None, limit: int | None = None, seed: int = 0) -> LoadedDataset:
    """GSM8K-verification: 4 model solutions per question; key = the parsed final answer."""
    file = _data_file(path, "gsm8k/model_solutions_dev.jsonl")
    rows = read_jsonl(file.read_text(encoding="utf-8"))
    for n, record in rows:
        _require(record, ("question", *GSM8K_SOLVERS), line=n)
    labelled, unparsed = [], 0
    for n, record in (rows[i] for i in _choose(len(rows), limit, seed)):
        # which model wrote a solution correlates with correctness, so slots are shuffled and unnamed
        solutions = [record[s] for s in GSM8K_SOLVERS]
        seeded_rng("gsm8k", seed, n).shuffle(solutions)
        for j, solution in enumerate(solutions):
            uid, answer = f"gsm8k-q{n:03d}-s{j}", gsm8k_final_answer(solution["solution"])
            unparsed += answer is None
            # no final answer: a key of its own, so it neither matches nor may join another True answer
            key = answer or f"unparsed:{uid}"
            fields = {"question": record["question"], "solution": solution["solution"]}
            labelled.append((Example(uid, fields, f"q{n:03d}", key), int(bool(solution["is_correct"]))))
    notes = [f"{unparsed} of {len(labelled)} solutions have no 'A:' final answer; each got a key of its own"]
    return _labelled("gsm8k_verification", "gsm8k_verification", labelled, file, "gsm8k", notes)


def _split_dialogue(dialogue: str) -> tuple[str, str]:
    prompt, _, response = dialogue.rpartition(HH_ASSISTANT)
    return prompt.strip(), response.strip()


def load_hh_rlhf(path=None, limit: int | None = None, seed: int = 0) -> LoadedDataset:
    """HH-RLHF harmlessness pairs; both orders of a pair form one group with keys "ab"/"ba".

    Pairs whose two dialogues differ before the last assistant turn, or with an empty response,
    are skipped (9 of 2,312): they are not a clean comparison of two responses.
    """
    file = _data_file(path, "hh_rlhf/harmless_base_test.jsonl.gz")
    with gzip.open(file, "rt", encoding="utf-8") as handle:
        records = read_jsonl(handle.read())
    pairs, skipped = [], 0
    for n, record in records:
        for column in ("chosen", "rejected"):
            if HH_ASSISTANT not in record.get(column, ""):
                raise DatasetError(f"no {HH_ASSISTANT.strip()!r} turn", line=n, column=column)
        (prompt, chosen), (other_prompt, rejected) = map(_split_dialogue, (record["chosen"], record["rejected"]))
        if prompt != other_prompt or not chosen or not rejected:
            skipped += 1
            continue
        pairs.append((n, prompt, chosen, rejected))
    labelled = []
    for n, prompt, chosen, rejected in (pairs[i] for i in _choose(len(pairs), limit, seed)):
        rng = seeded_rng("hh_rlhf", seed, n)
        chosen_first = rng.random() < 0.5  # which response "ab" puts first: a coin, so keys tell nothing
        first, second = (chosen, rejected) if chosen_first else (rejected, chosen)
        orders = [("ab", first, second, int(chosen_first)), ("ba", second, first, int(not chosen_first))]
        rng.shuffle(orders)
        for key, response_a, response_b, label in orders:
            fields = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
            labelled.append((Example(f"hh-{n:04d}-{key}", fields, f"pair{n:04d}", key), label))
    notes = [f"skipped {skipped} pairs: prompts differ or a response is empty"]
    return _labelled("hh_rlhf_harmless", "hh_rlhf_harmless", labelled, file, "hh_rlhf", notes)


def load_sentiment(source="yelp", single=False, limit: int | None = None, seed=0, path=None) -> LoadedDataset:
    """UCI sentiment sentences: two complementary claims each (or one, with single=True).

    A limit picks sentences evenly from both classes: gold shapes which subset is drawn (a
    balanced evaluation set), never anything the search sees.
    """
    if source not in SENTIMENT_FILES:
        raise ValueError(f"source must be one of {sorted(SENTIMENT_FILES)}, got {source!r}")
    file = _data_file(path, SENTIMENT_FILES[source])
    # split on '\n' only: str.splitlines would also break at \x85, \u2028 and friends
    lines = file.read_bytes().decode("utf-8").split("\n")
    sentences = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            if n < len(lines):
                raise DatasetError("empty line", line=n)
            continue
        text, tab, label = line.rpartition("\t")
        if not tab or label.strip() not in ("0", "1"):
            raise DatasetError("expected a sentence, a tab, then 0 or 1", line=n, column="label")
        if not text.strip():
            raise DatasetError("empty sentence", line=n, column="text")
        sentences.append((n, text, int(label.strip())))
    chosen = _choose(len(sentences), limit, seed, strata=[label for _, _, label in sentences])
    labelled = []
    for n, text, label in (sentences[i] for i in chosen):
        uid = f"{source}-{n:04d}"
        labelled += [(Example(uid, {"text": text}), label)] if single else sentiment_claims(uid, text, label, seed)
    task = "sentiment_single" if single else "sentiment"
    return _labelled(f"{task}_{source}", task, labelled, file, "sentiment")


SHARED = {
    "truthfulqa": lambda task, limit: load_truthfulqa(limit=limit),
    "gsm8k": lambda task, limit: load_gsm8k(limit=limit),
    "hh_rlhf": lambda task, limit: load_hh_rlhf(limit=limit),
    "sentiment": lambda task, limit: load_sentiment("yelp", task == "sentiment_single", limit),
    "yelp": lambda task, limit: load_sentiment("yelp", task == "sentiment_single", limit),
    "amazon": lambda task, limit: load_sentiment("amazon", task == "sentiment_single", limit),
}
