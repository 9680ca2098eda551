"""Mutual predictability and U(D) (paper section 2.2), over any LanguageModel backend.

For each labeled example i, the prompt is every other labeled example as a demonstration (or,
with in-context folds, those of the other folds: prompts.demonstrations), in the fixed
demonstration order, then x_i's query; log P(y_i | x_i, D minus i) is read from the
next-token distribution over the task's label words. U(D) = alpha * P(D) - I(D), where P(D)
is the configured objective (config.OBJECTIVES) over those log-probabilities.

Prompts are laid out by prompts.py (query text, then label word + separator, per demonstration)
as segments, so that a backend can share computation between prompts with common leading segments.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..backends.base import LabelQuery, LanguageModel
from .prompts import Prompts, demonstrations
from .records import UtilityParts
from .tasks import ConsistencyIndex, Example, Task

CONTEXT_POLICIES = ("drop_oldest", "error")
PROMPTS_PER_SET = 16  # prompt answers remembered per remembered labeled set


class ContextOverflowError(ValueError):
    """A prompt does not fit the model's context window and the policy says stop."""


def normalize(raw: np.ndarray, calibration: str = "none", center: np.ndarray | None = None) -> np.ndarray:
    """Log-probabilities renormalized over the label words, row-wise.

    calibration "centered" subtracts each label's mean raw log-score over the labeled set
    (`center`, or the rows' own mean) first, so that a model's standing preference for one label
    word cannot pass for predictability.
    """
    raw = np.atleast_2d(np.asarray(raw, dtype=np.float64))
    if calibration == "centered":
        raw = raw - (raw.mean(axis=0) if center is None else center)
    peak = raw.max(axis=1, keepdims=True)
    return raw - (peak + np.log(np.exp(raw - peak).sum(axis=1, keepdims=True)))


def label_confidence(raw: np.ndarray, labels: Sequence[int], calibration: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """The model's probability of each row's label and its signed log-odds (label against the
    other), from raw label log-probs [n, 2] as scored; renormalized over the two label words and,
    under "centered" calibration, centered over the scored rows first, as the run's own score does.
    NaN where a row is unscored (NaN in `raw`)."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(labels, dtype=int)
    probability, log_odds = np.full(len(raw), np.nan), np.full(len(raw), np.nan)
    scored = ~np.isnan(raw).any(axis=1)
    if scored.any():
        logp = normalize(raw[scored], calibration)
        chosen = labels[scored]
        rows = np.arange(len(chosen))
        probability[scored] = np.exp(logp[rows, chosen])
        log_odds[scored] = logp[rows, chosen] - logp[rows, 1 - chosen]
    return probability, log_odds


def predictability(logp: np.ndarray, labels: Sequence[int], objective: str = "sum") -> float:
    """P(D) from renormalized label log-probs (one row per labeled example) and their labels.

    sum: sum of log P(y_i); chance: sum of log P(y_i) + log(number of labels), each term measured
    against a coin flip; mean: the mean signed log-odds log P(y_i) - log P(other label).
    """
    if len(labels) == 0:
        return 0.0
    rows = np.arange(len(labels))
    chosen = logp[rows, np.asarray(labels)]
    if objective == "sum":
        return float(sum(chosen))  # Python's sum, left to right: the order earlier runs were scored in
    if objective == "chance":
        return float(sum(chosen + np.log(logp.shape[1])))
    if objective == "mean":
        other = logp[rows, 1 - np.asarray(labels)]
        return float(sum(chosen - other) / len(labels))
    raise ValueError(f"unknown objective {objective!r}")


def utility_parts(alpha: float, predictability: float, inconsistencies: int) -> UtilityParts:
    """U(D) = alpha * P(D) - I(D): the one place it is computed. alpha * P is formed first and I
    subtracted from it, the order every stored run was scored in, so stored numbers replay bit for bit."""
    alpha_p = alpha * predictability
    return UtilityParts(u=alpha_p - inconsistencies, alpha_p=alpha_p, i=inconsistencies)


@dataclass
class Evaluation:
    """Scores of one labeled set: raw label log-probs per example, P(D) and I(D)."""

    raw: dict[int, np.ndarray]
    predictability: float
    inconsistencies: int
    dropped_demos: int = 0  # demonstrations left out to fit the context window, summed over prompts

    def parts(self, alpha: float) -> UtilityParts:
        return utility_parts(alpha, self.predictability, self.inconsistencies)

    def utility(self, alpha: float) -> float:
        """U alone, for comparing candidates (ConsistencyFix, the bench)."""
        return self.parts(alpha).u

    def center(self) -> np.ndarray | None:
        if not self.raw:
            return None
        return np.mean(np.stack(list(self.raw.values())), axis=0)


@dataclass
class Scorer:
    """Builds the leave-one-out prompts of a labeled set and turns backend answers into U(D).

    mode: "exact" and "naive" ask the backend for every leave-one-out prompt (pass the backend's
    naive() view for the reference scorer); "prequential" approximates each term by
    log P(y_i | x_i, demonstrations before i) from one pass over D (the backend must offer
    sequence_label_logprobs).
    """

    backend: LanguageModel
    task: Task
    examples: Sequence[Example]
    calibration: str = "none"
    use_consistency: bool = True
    mode: str = "exact"
    context_policy: str = "drop_oldest"
    objective: str = "sum"
    folds: int = 0  # in-context folds: 0 leave-one-out; F >= 2 each prompt shows the other folds' labels
    # Evaluations of labeled sets already scored, by (order, labels): the same set scores the same.
    # A search re-proposes the same change while D stands (a rejected relabel comes back each time its
    # example is drawn), so this spares whole leave-one-out scorings; 0 turns it off (icm bench's
    # per-step timings, which score the same sets again on purpose).
    remember: int = 256
    consistency: ConsistencyIndex = field(init=False)
    prompts: Prompts = field(init=False)
    _token_counts: dict[str, int] = field(init=False, default_factory=dict)
    _remembered: "OrderedDict[tuple, Evaluation]" = field(init=False, default_factory=OrderedDict)
    remembered_hits: int = field(init=False, default=0)  # labeled sets answered from memory, not the model
    # Answers to single prompts asked before, by their segments (remember x PROMPTS_PER_SET of them):
    # a step leaves many prompts as they were (the relabeled example's own; with in-context folds,
    # a whole fold's after an addition to another), and the backend keeps their demonstrations'
    # states but not their queries'.
    _answers: "OrderedDict[tuple[str, ...], np.ndarray]" = field(init=False, default_factory=OrderedDict)
    answered_prompts: int = field(init=False, default=0)  # prompts answered from memory, not the model

    def __post_init__(self) -> None:
        if self.context_policy not in CONTEXT_POLICIES:
            raise ValueError(f"context_policy must be one of {CONTEXT_POLICIES}")
        if self.folds == 1 or self.folds < 0:
            raise ValueError("folds must be 0 (leave-one-out) or at least 2")
        if self.folds and self.mode == "prequential":
            raise ValueError("the prequential scorer reads D as one prompt: it has no folds")
        rule = self.task.rule if self.use_consistency else "none"
        self.consistency = ConsistencyIndex(rule, list(self.examples))
        self.prompts = Prompts(self.task, self.examples)

    # prompt building -------------------------------------------------------------------

    def _tokens(self, text: str) -> int:
        if text not in self._token_counts:
            self._token_counts[text] = self.backend.count_tokens(text)
        return self._token_counts[text]

    def prompt(self, order: Sequence[int], labels: Mapping[int, int], target: int) -> tuple[LabelQuery, int]:
        """The prompt for `target` given the labeled examples it may see (every other one, or the
        other folds'); returns (query, demos dropped)."""
        demos = demonstrations(order, target, self.folds)
        budget = self.backend.context_window - 1 - self._tokens(self.prompts.query(target))
        lengths = [self._tokens(self.prompts.query(j)) + self._tokens(self.prompts.answer(labels[j])) for j in demos]
        dropped = 0
        total = sum(lengths)
        while total > budget and dropped < len(demos):
            if self.context_policy == "error":
                raise ContextOverflowError(
                    f"the prompt for example {target} needs {total + 1 + (self.backend.context_window - 1 - budget)} "
                    f"tokens but the model's context window is {self.backend.context_window}; "
                    "use fewer examples, a longer-context model, or context_policy='drop_oldest'"
                )
            total -= lengths[dropped]
            dropped += 1
        if total > budget:
            raise ContextOverflowError(f"example {target} alone does not fit the context window")
        segments = self.prompts.segments(((j, labels[j]) for j in demos[dropped:]), target)
        return LabelQuery(segments, self.task.label_words), dropped

    def check_fits(self, only: Sequence[int] | None = None) -> None:
        """Refuse, naming the first one, examples whose prompt cannot fit the context window even
        with no demonstrations: found when the data meets the model, not as a failed run later.
        `only`: check just these examples (a batch run's)."""
        longest_label = max(self._tokens(self.prompts.answer(y)) for y in (0, 1))
        for i in range(len(self.examples)) if only is None else only:
            example = self.examples[i]
            needed = self._tokens(self.prompts.query(i)) + 1
            if needed > self.backend.context_window:
                raise ContextOverflowError(
                    f"row {i + 1} (id {example.uid!r}) needs {needed} tokens but the model's context window is "
                    f"{self.backend.context_window}: shorten it, leave it out, or use a longer-context model")
            if needed + longest_label > self.backend.context_window and len(self.examples) > 1:
                raise ContextOverflowError(
                    f"row {i + 1} (id {example.uid!r}) leaves no room for a demonstration in the model's context "
                    f"window of {self.backend.context_window} tokens: shorten it or use a longer-context model")

    # scoring -----------------------------------------------------------------------------
    def hold(self, order: Sequence[int], labels: Mapping[int, int]) -> None:
        """Tell the backend the labeled set the next proposals start from, so that a bounded
        cache keeps what they reuse: each of their prompts begins with a leading part of its
        demonstrations, all of which the last example's prompt holds. Once the context window
        drops demonstrations, prompts start at different ones and no one prefix serves them
        all: then nothing is held (measured in docs/speed.md, "Eviction"). With in-context folds
        the next prompts start with one of F prefixes: the last example's fold's is held, the
        others are few and small enough for the store's recency order to keep."""
        segments: tuple[str, ...] = ()
        if order:
            try:
                query, dropped = self.prompt(order, labels, order[-1])
                segments = () if dropped else query.segments
            except ContextOverflowError:  # the last example alone does not fit
                pass
        self.backend.hold_prefix(segments)

    def predict(self, order: Sequence[int], labels: Mapping[int, int], target: int) -> np.ndarray:
        """Raw label log-probs for `target` given D minus target (Algorithm 1, line 6)."""
        return self.predict_many(order, labels, [target])[0]

    def predict_many(self, order: Sequence[int], labels: Mapping[int, int], targets: Sequence[int]) -> np.ndarray:
        """predict() for several targets in one backend call: raw label log-probs [len(targets), 2]."""
        return self._ask([self.prompt(order, labels, target)[0] for target in targets])

    def _ask(self, queries: Sequence[LabelQuery]) -> np.ndarray:
        """Raw label log-probs [len(queries), 2]: remembered answers, the backend for the rest."""
        rows: list[np.ndarray | None] = [self._answers.get(query.segments) for query in queries]
        missing = [k for k, row in enumerate(rows) if row is None]
        self.answered_prompts += len(queries) - len(missing)
        if missing:
            for k, row in zip(missing, self.backend.label_logprobs([queries[k] for k in missing])):
                rows[k] = row
        limit = self.remember * PROMPTS_PER_SET
        for query, row in zip(queries, rows) if limit else ():
            self._answers[query.segments] = row
            self._answers.move_to_end(query.segments)
        while len(self._answers) > limit:
            self._answers.popitem(last=False)
        return np.stack(rows) if rows else np.zeros((0, 2))

    def evaluate(self, order: Sequence[int], labels: Mapping[int, int]) -> Evaluation:
        """Score one labeled set: order lists its examples in demonstration order."""
        return self.evaluate_many([(order, labels)])[0]

    def evaluate_many(self, candidates: Sequence[tuple[Sequence[int], Mapping[int, int]]]) -> list[Evaluation]:
        """Score several labeled sets with one backend call (e.g. every ConsistencyFix option)."""
        if self.mode == "prequential":
            return [self._evaluate_prequential(order, labels) for order, labels in candidates]
        keys = [(tuple(order), tuple(labels[i] for i in order)) for order, labels in candidates]
        missing = [k for k, key in enumerate(keys) if key not in self._remembered]
        self.remembered_hits += len(keys) - len(missing)
        found = dict(zip(missing, self._evaluate_unremembered([candidates[k] for k in missing]))) if missing else {}
        results = []
        for k, key in enumerate(keys):
            evaluation = found[k] if k in found else self._remembered[key]
            if self.remember > 0:  # most recently used last; the oldest forgotten first
                self._remembered[key] = evaluation
                self._remembered.move_to_end(key)
                while len(self._remembered) > self.remember:
                    self._remembered.popitem(last=False)
            results.append(evaluation)
        return results

    def _evaluate_unremembered(self, candidates: Sequence[tuple[Sequence[int], Mapping[int, int]]]) -> list[Evaluation]:
        queries: list[LabelQuery] = []
        dropped_per_candidate = []
        for order, labels in candidates:
            dropped_total = 0
            for target in order:
                query, dropped = self.prompt(order, labels, target)
                queries.append(query)
                dropped_total += dropped
            dropped_per_candidate.append(dropped_total)
        raw_all = self._ask(queries)
        results, start = [], 0
        for (order, labels), dropped in zip(candidates, dropped_per_candidate):
            raw = {target: raw_all[start + k] for k, target in enumerate(order)}
            start += len(order)
            results.append(self.score_raw(raw, labels, dropped))
        return results

    def _evaluate_prequential(self, order: Sequence[int], labels: Mapping[int, int]) -> Evaluation:
        segments = self.prompts.segments((j, labels[j]) for j in order)  # D as one prompt
        read_after = list(range(0, len(segments), 2))  # after each query, before its label word
        raw_rows = self.backend.sequence_label_logprobs(segments, read_after, self.task.label_words)
        raw = {target: raw_rows[k] for k, target in enumerate(order)}
        return self.score_raw(raw, labels, 0)

    def score_raw(self, raw: dict[int, np.ndarray], labels: Mapping[int, int], dropped: int = 0) -> Evaluation:
        """P(D) and I(D) from raw label log-probs given in demonstration order."""
        if raw:
            targets = list(raw)
            logp = normalize(np.stack([raw[t] for t in targets]), self.calibration)
            value = predictability(logp, [labels[t] for t in targets], self.objective)
        else:
            value = 0.0
        inconsistencies = len(self.consistency.inconsistent_pairs(labels))
        return Evaluation(raw, value, inconsistencies, dropped)
