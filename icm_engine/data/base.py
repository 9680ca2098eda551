"""What every loader of data shares: the LoadedDataset it returns, the DatasetError it raises, and
the helpers that keep gold out of what the search sees (seeded orders, neutral keys, one rule
for reading a gold value).

datasets.py (tables, samples, any spec) and shared_data.py (the real data in ../shared/data)
both build on this module; neither imports the other's internals.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from ..core.errors import InputError
from ..core.tasks import Example, Task

ATTRIBUTION = {
    "truthfulqa": "TruthfulQA (Lin, Hilton & Evans, 2022), Apache-2.0; claims as released with the ICM paper.",
    "gsm8k": "GSM8K model solutions, openai/grade-school-math (Cobbe et al., 2021), MIT License.",
    "hh_rlhf": "Anthropic HH-RLHF harmless-base test split (Bai et al., 2022), MIT License.",
    "sentiment": "Sentiment Labelled Sentences (Kotzias et al., 'From Group to Individual Labels using "
    "Deep Features', KDD 2015), UCI Machine Learning Repository, CC BY 4.0.",
}
SENTIMENT_CLAIMS = {"positive": "This review is positive.", "negative": "This review is negative."}
GOLD_WORDS = {"0": 0, "1": 1, "false": 0, "true": 1, "False": 0, "True": 1}


class DatasetError(InputError, ValueError):
    """Bad input data; the message names the place and the column.

    The place is the JSONL line where known, else the 1-based data row (a CSV header is not a row).
    """

    def __init__(self, problem: str, *, row: int | None = None, column: str | None = None, line: int | None = None):
        self.problem, self.row, self.column, self.line = problem, row, column, line
        place = f"line {line}" if line is not None else f"row {row}" if row is not None else None
        where = ", ".join(w for w in (place, None if column is None else f"column {column!r}") if w)
        super().__init__(f"{where}: {problem}" if where else problem)


@dataclass
class LoadedDataset:
    name: str
    task: Task
    examples: list[Example]
    gold: dict[int, int] | None  # example index -> 0/1; evaluation only, never shown to the search
    source: str
    attribution: str = ""
    notes: list[str] = field(default_factory=list)  # what a loader skipped or could not parse

    def __len__(self) -> int:
        return len(self.examples)


def read_jsonl(text: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; split on '\n' only, like the sources."""
    records = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"not valid JSON ({error.msg})", line=n) from None
        if not isinstance(record, dict):
            raise DatasetError("each line must be a JSON object", line=n)
        check_unicode(record, line=n)
        records.append((n, record))
    return records


def check_unicode(record, **place) -> None:
    """Refuse text no UTF-8 can hold: JSON's escapes decode "\\ud800" to half a surrogate pair, which
    the database and the model's tokenizer would fail on much later."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError("not valid Unicode text: a \\uD800-\\uDFFF escape without its other half", **place) from None


def seeded_rng(*parts) -> random.Random:
    # string seeds hash the same in every process, unlike hash() of a tuple
    return random.Random(":".join(str(p) for p in parts))


def gold_value(value) -> int | None:
    """0/1 from a bool, a number equal to 0 or 1 (1.0 too), or text naming one (0, 1, 0.0, 1.0,
    true, false): one rule for every format, so a CSV and a Parquet of the same table agree.
    None for anything else."""
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()  # numpy scalars from pandas
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        word = value.strip()
        if word in GOLD_WORDS:
            return GOLD_WORDS[word]
        try:
            value = Decimal(word)
        except InvalidOperation:
            return None
        if not value.is_finite():  # NaN, sNaN, Infinity: comparing sNaN would raise
            return None
    if isinstance(value, (int, float, Decimal)) and value in (0, 1):
        return int(value)
    return None


def gsm8k_final_answer(solution: str) -> str | None:
    """The final answer after "A:" on the solution's last line, normalized; None if there is none.

    Normalizing: strip, drop commas, a leading "$" and trailing "."; numbers are written
    canonically ("18.00" -> "18", "0.50" -> "0.5"); other text is lowercased ("1/5").
    """
    last = solution.rstrip().split("\n")[-1].strip()
    if not last.startswith("A:"):
        return None
    answer = last[2:].strip().replace(",", "").rstrip(".").strip().removeprefix("$").strip()
    if not answer:
        return None
    try:
        number = Decimal(answer)
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():
        return answer.lower()
    return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")


def sentiment_claims(uid: str, text: str, positive: int, seed) -> list[tuple[Example, int]]:
    """A sentence's two complementary claims in seeded order, each with its gold."""
    keys = list(SENTIMENT_CLAIMS)
    seeded_rng("sentiment", seed, uid).shuffle(keys)
    claim = lambda key: {"text": text, "claim": SENTIMENT_CLAIMS[key]}  # noqa: E731
    return [(Example(f"{uid}-{key[:3]}", claim(key), uid, key), int((key == "positive") == bool(positive)))
            for key in keys]
