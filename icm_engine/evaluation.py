"""The paper's comparison (sections 3.2, 4.1, 5): test accuracy of many-shot prompting with gold,
ICM and perturbed labels, of zero-shot prompting, of the consistency ablation and of each
scoring objective, over several seeds.

Honesty rules this module keeps:
- A gold-labelled dataset is split by consistency group into a search split and a test split,
  so no group straddles the two (a sentence's two claims, a question's solutions, both orders
  of a pair stay together).
- Each ICM search is given only the search split's Examples (inputs, group, key). Search-split
  gold is read only to build the gold and perturbed demonstrations and to report how accurate
  the ICM labels are.
- Test examples are only ever the final query of a prediction prompt, never a demonstration.

Rows (names as stored): zero_shot (the test query alone); gold (many-shot, gold labels); icm
(many-shot, labels of a search with the paper's objective); icm_<calibration> for every other
objective the engine offers; icm_no_consistency (the paper's ablation, Figure 10: no I(D), no
ConsistencyFix); perturbed (the Figure 8 control: the gold labels of the same demonstrations
with exactly as many flipped, at seeded random positions, as the icm row gets wrong there).

Within one seed every many-shot row uses the same demonstrations: the same search-split
examples, in the same seeded order, the same count (as many as fit the context for the
longest test query). Rows differ only in the labels those examples carry. Every row, zero-shot
included, decides with DECISION_RULE.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .backends.base import LabelQuery, LanguageModel, ModelInfo
from .config import CALIBRATIONS, ModelConfig, RunConfig, SearchConfig
from .runner import make_scorer
from .scoring import ContextOverflowError, normalize
from .search import Search
from .tasks import Example, Task

# How a test prediction is decided from the log-odds s = log P(second label word) - log P(first),
# both renormalized over the two label words. Every row of a table uses the same rule, and every
# row also records its accuracy under the other rule. A small model often leans to one label
# word whatever the input (Gemma 3 270M base says True to most sentiment claims), and then
# "argmax" measures the lean, not the knowledge; "centered" removes it using the test inputs'
# own scores only (no gold): subtract the mean log-odds over the row's test queries.
DECISION_RULES = {
    "centered": (
        "argmax after centering: predict the second label word (True) when the log-odds "
        "log P(True) - log P(False), renormalized over the two label words, exceeds its mean over "
        "that row's test queries (no gold used); no consistency rule at test time; the same rule for every row"
    ),
    "argmax": (
        "argmax of the two label words' next-token probabilities renormalized over those two words "
        "(a tie goes to the first label word, i.e. False); no consistency rule at test time; "
        "the same rule for every row"
    ),
}
DEFAULT_DECISION = "centered"
DECISION_RULE = DECISION_RULES[DEFAULT_DECISION]
ZERO_SHOT, GOLD, ICM, PERTURBED, NO_CONSISTENCY = "zero_shot", "gold", "icm", "perturbed", "icm_no_consistency"
SIZE_UNITS = ("groups", "examples")
PREDICT_BATCH = 64  # test queries per backend call: small enough to print progress, large enough to batch

Log = Callable[[str], None]


def icm_variants() -> dict[str, dict]:
    """Each ICM row's search settings: one row per scoring objective, plus the paper's ablation."""
    variants = {(ICM if c == "none" else f"icm_{c}"): {"calibration": c, "use_consistency": True} for c in CALIBRATIONS}
    variants[NO_CONSISTENCY] = {"calibration": "none", "use_consistency": False}
    return variants


def all_methods() -> tuple[str, ...]:
    return (ZERO_SHOT, GOLD, *icm_variants(), PERTURBED)


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of one evaluation; stored with its results."""

    task: str
    data: str  # the load_any spec the dataset came from
    search_size: int = 32  # groups (or examples, see size_unit) in the search split
    test_size: int = 100  # groups (or examples) in the test split
    size_unit: str = "groups"  # "examples": whole groups are taken while the count stays within the size
    split_seed: int = 0  # one split for all seeds, so every seed is scored on the same test set
    seeds: tuple[int, ...] = (0, 1, 2)  # each drives the searches, the demonstration order and the perturbation
    steps: int | None = None  # ICM iterations per search; None: twice the search split's examples
    max_demos: int | None = None  # cap on demonstrations; None: as many as fit the context
    methods: tuple[str, ...] = field(default_factory=all_methods)
    search: SearchConfig = field(default_factory=SearchConfig)  # alpha, temperatures, scorer; per-row fields overridden
    model: ModelConfig = field(default_factory=ModelConfig)
    decision: str = DEFAULT_DECISION  # a key of DECISION_RULES
    decision_rule: str = ""  # its text, filled in from `decision`

    def __post_init__(self) -> None:
        if self.decision not in DECISION_RULES:
            raise ValueError(f"decision must be one of {tuple(DECISION_RULES)}, got {self.decision!r}")
        object.__setattr__(self, "decision_rule", DECISION_RULES[self.decision])
        unknown = set(self.methods) - set(all_methods())
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {all_methods()}, got unknown {sorted(unknown)}")
        if self.size_unit not in SIZE_UNITS:
            raise ValueError(f"size_unit must be one of {SIZE_UNITS}, got {self.size_unit!r}")
        if self.search_size < 1 or self.test_size < 1:
            raise ValueError("search_size and test_size must be at least 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.max_demos is not None and self.max_demos < 1:
            raise ValueError("max_demos must be at least 1")
        if self.steps is not None and self.steps < 0:
            raise ValueError("steps must be non-negative")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- the split ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    search: list[int]  # dataset indices, in dataset order
    test: list[int]


def split_by_group(examples: Sequence[Example], search_size: int, test_size: int, seed: int = 0,
                   unit: str = "groups") -> Split:
    """Shuffle the groups (an ungrouped example is its own group) and deal them out: search first.

    Only group membership is read, never gold, so the split cannot favour any labeling.
    """
    groups: dict = {}
    for index, example in enumerate(examples):
        groups.setdefault(example.group if example.group is not None else ("", index), []).append(index)
    keys = list(groups)  # dataset order, so the shuffle is reproducible
    random.Random(f"split:{seed}").shuffle(keys)
    parts: list[list[int]] = []
    position = 0
    for size in (search_size, test_size):
        taken: list[int] = []
        count = 0
        while position < len(keys):
            members = groups[keys[position]]
            step = 1 if unit == "groups" else len(members)
            if count + step > size:
                break
            taken += members
            count += step
            position += 1
        if not taken or (position == len(keys) and count < size):
            raise ValueError(
                f"the dataset has {len(keys)} groups ({len(examples)} examples): too few for a search split "
                f"of {search_size} and a test split of {test_size} {unit}"
            )
        parts.append(sorted(taken))
    return Split(parts[0], parts[1])


# ---- prompts and the decision --------------------------------------------------------------


def demo_prefix(task: Task, demos: Sequence[Example], labels: Sequence[int]) -> tuple[str, ...]:
    """Demonstration segments in the scorer's format: each query, then its label word and separator."""
    segments: list[str] = []
    for example, label in zip(demos, labels, strict=True):
        segments += [task.render_query(example), task.render_label(int(label))]
    return tuple(segments)


def fit_demo_count(backend: LanguageModel, task: Task, pool: Sequence[Example], tests: Sequence[Example],
                   max_demos: int | None = None) -> int:
    """How many of `pool`, taken in order, fit before the longest test query whatever their labels.

    Each demonstration is charged its longer label word, so the count holds for gold, ICM and
    perturbed labels alike and no prompt is ever truncated.
    """
    label_tokens = max(backend.count_tokens(task.render_label(y)) for y in (0, 1))
    longest = max(backend.count_tokens(task.render_query(e)) for e in tests)
    budget = backend.context_window - 1 - longest  # 1: BOS
    if budget < 0:
        raise ContextOverflowError(f"a test query of {longest} tokens does not fit the context window of {backend.context_window}")
    used = count = 0
    for example in pool:
        if max_demos is not None and count >= max_demos:
            break
        cost = backend.count_tokens(task.render_query(example)) + label_tokens
        if used + cost > budget:
            break
        used, count = used + cost, count + 1
    return count


def label_log_odds(backend: LanguageModel, task: Task, prefix: tuple[str, ...], tests: Sequence[Example],
                   log: Log | None = None, what: str = "") -> np.ndarray:
    """log P(label 1) - log P(label 0) for each test query after `prefix`: float array [len(tests)]."""
    odds = []
    for start in range(0, len(tests), PREDICT_BATCH):
        chunk = tests[start : start + PREDICT_BATCH]
        queries = [LabelQuery(prefix + (task.render_query(e),), task.label_words) for e in chunk]
        logp = normalize(backend.label_logprobs(queries), "none")  # [len(chunk), 2]
        odds.append(logp[:, 1] - logp[:, 0])
        if log is not None and len(tests) > PREDICT_BATCH:
            log(f"  {what}: {min(start + PREDICT_BATCH, len(tests))}/{len(tests)} test queries")
    return np.concatenate(odds) if odds else np.zeros(0)


def decide(log_odds: np.ndarray, decision: str) -> np.ndarray:
    """DECISION_RULES[decision] applied to one row's log-odds: int array of 0/1."""
    if decision == "centered":
        log_odds = log_odds - (log_odds.mean() if len(log_odds) else 0.0)
    elif decision != "argmax":
        raise ValueError(f"unknown decision {decision!r}")
    return (log_odds > 0).astype(int)  # a tie goes to label 0, as argmax takes the first index


def predict(backend: LanguageModel, task: Task, prefix: tuple[str, ...], tests: Sequence[Example],
            log: Log | None = None, what: str = "", decision: str = "argmax") -> np.ndarray:
    """decide() for each test query after `prefix`: int array [len(tests)] of 0/1."""
    return decide(label_log_odds(backend, task, prefix, tests, log, what), decision)


def perturb_to_match(gold: Sequence[int], reference: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Gold labels with exactly as many flipped, at random positions, as `reference` gets wrong."""
    wrong = sum(int(g) != int(r) for g, r in zip(gold, reference, strict=True))
    flip = set(rng.choice(len(gold), size=wrong, replace=False).tolist())
    return [1 - int(g) if k in flip else int(g) for k, g in enumerate(gold)]


# ---- ICM searches --------------------------------------------------------------------------


def run_icm(backend: LanguageModel, task: Task, examples: Sequence[Example], config: SearchConfig,
            log: Log | None = None, what: str = "icm") -> dict[int, int]:
    """One search over `examples` (inputs only) to config.steps; returns its labels by position."""
    scorer = make_scorer(backend, task, list(examples), RunConfig(task=task.name, dataset="eval", search=config))
    search = Search(scorer, config)
    every = max(1, config.steps // 20)  # about 5% at a time: searches are the slow part on CPU
    started = time.perf_counter()
    while not search.done:
        record = search.step()
        if log is not None and (record.iteration % every == 0 or search.done):
            log(f"  {what}: step {record.iteration}/{config.steps}, {record.labeled_count} labeled, "
                f"{time.perf_counter() - started:.0f} s")
    return search.label_map()


def _searches(backend: LanguageModel, task: Task, examples: Sequence[Example], gold: Sequence[int],
              variants: dict[str, dict], base: SearchConfig, say: Log) -> tuple[dict[str, dict[int, int]], dict[str, dict]]:
    """One seed's ICM searches (inputs only); gold is read afterwards, to report label accuracy."""
    labels_by: dict[str, dict[int, int]] = {}
    info: dict[str, dict] = {}
    for method, settings in variants.items():
        config = replace(base, **settings)
        if method == NO_CONSISTENCY and task.rule == "none" and ICM in labels_by:
            # Without a rule, use_consistency changes nothing in the search: same labels, no rerun.
            labels_by[method] = labels_by[ICM]
            info[method] = dict(info[ICM], search_config=dataclasses.asdict(config),
                                note="the task has no consistency rule: the same search as icm")
            continue
        say(f"seed {base.seed}: ICM search '{method}' on {len(examples)} examples")
        began = time.perf_counter()
        labels = labels_by[method] = run_icm(backend, task, examples, config, say, method)
        accuracy = float(np.mean([y == gold[k] for k, y in labels.items()])) if labels else None
        info[method] = {
            "label_accuracy": accuracy, "label_coverage": len(labels) / len(examples),
            "search_seconds": time.perf_counter() - began, "search_config": dataclasses.asdict(config),
        }
        say(f"  {method}: {len(labels)}/{len(examples)} labeled, label accuracy on the search split "
            f"{'n/a' if accuracy is None else f'{accuracy:.3f}'}")
    return labels_by, info


# ---- the whole comparison ------------------------------------------------------------------


@dataclass
class EvalResult:
    rows: pd.DataFrame  # one row per method and seed: method, seed, accuracy, n_test, n_demos, extras
    config: dict  # EvalConfig plus what was resolved: split, model, sizes, wall time
    split: Split
    icm_labels: dict[tuple[str, int], dict[str, int]]  # (method, seed) -> uid -> label the search gave
    seconds: float

    def save(self, store, name: str) -> int:
        return store.save_eval(name, self.config, self.rows)


def evaluate(dataset, backend: LanguageModel, config: EvalConfig, log: Log | None = None,
             on_seed: Callable[["EvalResult"], None] | None = None) -> EvalResult:
    """Run every method of `config` on `dataset` (a LoadedDataset with gold); see the module docstring.

    on_seed, if given, receives the result so far after each seed (config["complete"] False),
    so a caller can save it before the next seed's searches start."""
    say = log or (lambda message: None)
    if dataset.gold is None:
        raise ValueError(f"{dataset.name}: evaluation needs gold labels (a gold/label column)")
    started = time.perf_counter()
    task: Task = dataset.task
    split = split_by_group(dataset.examples, config.search_size, config.test_size, config.split_seed, config.size_unit)
    search_examples = [dataset.examples[i] for i in split.search]
    search_gold = [int(dataset.gold[i]) for i in split.search]  # gold/perturbed demos and label accuracy only
    tests = [dataset.examples[i] for i in split.test]
    test_gold = np.array([int(dataset.gold[i]) for i in split.test])
    steps = config.steps if config.steps is not None else 2 * len(search_examples)
    say(f"split: {len(search_examples)} search examples, {len(tests)} test examples "
        f"({config.size_unit}: {config.search_size} + {config.test_size}); {steps} search steps per ICM run")

    rows: list[dict] = []
    info = getattr(backend, "info", None) or ModelInfo(name=backend.name, revision=backend.revision)
    info = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(vars(info))

    def resolved_config(running_seed: int | None) -> dict:
        """The config plus what was resolved; running_seed: None once complete, else the last seed done."""
        return config.to_dict() | {
            "steps_resolved": steps,
            "dataset": {"name": dataset.name, "source": dataset.source, "task": task.to_dict(), "n_examples": len(dataset.examples)},
            "backend": info | {"context_window": backend.context_window},
            "split": {"search_uids": [e.uid for e in search_examples], "test_uids": [e.uid for e in tests]},
            "wall_seconds": time.perf_counter() - started,
            "complete": running_seed is None,
            "seeds_done": list(config.seeds) if running_seed is None else list(config.seeds[: config.seeds.index(running_seed) + 1]),
        }

    def add_row(method: str, seed: int | None, log_odds: np.ndarray, demos: Sequence[int], labels: Sequence[int],
                seconds: float, **extra) -> None:
        by_rule = {rule: float(np.mean(decide(log_odds, rule) == test_gold)) for rule in DECISION_RULES}
        predictions = decide(log_odds, config.decision)
        demo_accuracy = float(np.mean([y == search_gold[k] for k, y in zip(demos, labels)])) if len(demos) else None
        rows.append({
            "method": method, "seed": seed, "accuracy": by_rule[config.decision], "n_test": len(tests),
            "n_demos": len(demos), "demo_accuracy": demo_accuracy, "demo_uids": [search_examples[k].uid for k in demos],
            "demo_labels": [int(y) for y in labels], "predictions": predictions.tolist(),
            "log_odds": [float(v) for v in log_odds], "predict_seconds": seconds,
            **{f"accuracy_{rule}": value for rule, value in by_rule.items()}, **extra,
        })
        others = ", ".join(f"{rule} {value:.3f}" for rule, value in by_rule.items() if rule != config.decision)
        say(f"{method} (seed {seed}): accuracy {by_rule[config.decision]:.3f} ({config.decision}; {others}) "
            f"on {len(tests)} test examples with {len(demos)} demonstrations")

    if ZERO_SHOT in config.methods:
        # Deterministic: the same prompt and rule whatever the seed, so it is computed once.
        began = time.perf_counter()
        add_row(ZERO_SHOT, None, label_log_odds(backend, task, (), tests, say, ZERO_SHOT), [], [], time.perf_counter() - began)

    variants = {m: v for m, v in icm_variants().items() if m in config.methods or (m == ICM and PERTURBED in config.methods)}
    icm_labels: dict[tuple[str, int], dict[str, int]] = {}
    for seed in config.seeds:
        labels_by, search_info = _searches(backend, task, search_examples, search_gold, variants,
                                           replace(config.search, steps=steps, seed=seed), say)
        for method, labels in labels_by.items():
            icm_labels[(method, seed)] = {search_examples[k].uid: y for k, y in labels.items()}

        # The demonstrations: search examples in a seeded order, kept only where every search of
        # this seed gave a label, so every row shows the very same examples.
        order = np.random.default_rng([seed, 1]).permutation(len(search_examples)).tolist()
        pool = [k for k in order if all(k in labels for labels in labels_by.values())]
        count = fit_demo_count(backend, task, [search_examples[k] for k in pool], tests, config.max_demos)
        demos = pool[:count]
        if count == 0:
            say(f"seed {seed}: warning: no demonstrations (no example labeled by every search, or none fits)")
        gold_demos = [search_gold[k] for k in demos]
        perturb_rng = np.random.default_rng([seed, 2])
        for method in config.methods:
            if method == ZERO_SHOT:
                continue
            extra: dict = {}
            if method == GOLD:
                labels = gold_demos
            elif method == PERTURBED:
                labels = perturb_to_match(gold_demos, [labels_by[ICM][k] for k in demos], perturb_rng)
                extra = {"matched_to": ICM}
            else:
                labels = [labels_by[method][k] for k in demos]
                extra = search_info[method]
            began = time.perf_counter()
            log_odds = label_log_odds(backend, task, demo_prefix(task, [search_examples[k] for k in demos], labels), tests, say, method)
            add_row(method, seed, log_odds, demos, labels, time.perf_counter() - began, **extra)

        if on_seed is not None:  # a long evaluation keeps every finished seed, whatever happens next
            on_seed(EvalResult(pd.DataFrame(rows), resolved_config(seed), split, icm_labels, time.perf_counter() - started))

    return EvalResult(pd.DataFrame(rows), resolved_config(None), split, icm_labels, time.perf_counter() - started)
