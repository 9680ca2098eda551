"""Are the labels any good? Two tables over a gold-labelled dataset, several seeds.

The label table: the accuracy, on the whole search split, of the labels each method would
export: every ICM variant (its search, then the final pass, so every example is labeled);
zero-shot labels; iterated self-labeling; random labels. Coverage and, for ICM, the share the
search labeled itself and its iterations per example, as the paper's Table 5 reports.

The test table (the paper's Figures 3, 8, 10): test accuracy of many-shot prompting whose
demonstrations are the whole search split (as many as fit the context, the same examples in the
same seeded order for every row, the count shown), so rows differ only in the labels those
examples carry: gold, each ICM variant, perturbed gold (as many flipped as the default ICM row
gets wrong), zero-shot labels, self-labels, random labels; plus zero-shot prompting itself.

Honesty rules this module keeps:
- A gold-labelled dataset is split by consistency group into a search split and a test split,
  so no group straddles the two (a sentence's two claims, a question's solutions, both orders
  of a pair stay together).
- Each search and each baseline labeler is given only the search split's Examples (inputs,
  group, key). Search-split gold is read only for the gold and perturbed demonstrations and to
  score the label table.
- Test examples are only ever the final query of a prediction prompt, never a demonstration.
- Every test row, zero-shot included, decides with the configured rule and records its
  accuracy under every rule in DECISION_RULES.
"""
from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..backends.base import LanguageModel
from ..core.config import CALIBRATIONS, LEARNERS, OBJECTIVES, PRESETS, LearnerConfig, ModelConfig, RunConfig, SearchConfig
from ..core.prompts import demo_prefix
from ..core.scoring import ContextOverflowError
from ..core.search import Search
from ..core.tasks import Example, Task
from ..runs.runner import make_scorer
from .baselines import (
    SELF_LABEL_ROUNDS, Progress, decide, label_log_odds, random_labels, self_labels, zero_shot_labels,
)

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
ZERO_SHOT_LABELS, SELF_LABELS, RANDOM_LABELS = "zero_shot_labels", "self_labels", "random_labels"
LABEL_TABLE, TEST_TABLE = "labels", "test"
SIZE_UNITS = ("groups", "examples")

Log = Callable[[str], None]


def icm_variants() -> dict[str, dict]:
    """Each ICM row's search settings over the eval's base SearchConfig: the defaults ("icm"), each
    objective x calibration, the released code's preset and the paper's consistency ablation."""
    variants: dict[str, dict] = {ICM: {}}
    for objective in OBJECTIVES:
        for calibration in CALIBRATIONS:
            variants[f"icm_{objective}_{calibration}"] = {"objective": objective, "calibration": calibration}
    variants["icm_released_code"] = dict(PRESETS["released_code"])
    variants[NO_CONSISTENCY] = {"use_consistency": False}
    return variants


def all_methods() -> tuple[str, ...]:
    return (ZERO_SHOT, GOLD, *icm_variants(), PERTURBED, ZERO_SHOT_LABELS, SELF_LABELS, RANDOM_LABELS)


DEFAULT_METHODS = (ZERO_SHOT, GOLD, ICM, NO_CONSISTENCY, PERTURBED, ZERO_SHOT_LABELS, SELF_LABELS, RANDOM_LABELS)


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
    steps: int | None = None  # cap on ICM iterations per search; None: the search config's own cap
    max_demos: int | None = None  # cap on demonstrations; None: as many as fit the context
    methods: tuple[str, ...] = DEFAULT_METHODS
    self_label_rounds: int = SELF_LABEL_ROUNDS
    search: SearchConfig = field(default_factory=SearchConfig)  # alpha, temperatures, scorer; per-row fields overridden
    model: ModelConfig = field(default_factory=ModelConfig)
    decision: str = DEFAULT_DECISION  # a key of DECISION_RULES
    decision_rule: str = ""  # its text, filled in from `decision`
    finetune: tuple[str, ...] = ()  # learners of the fine-tuning table (finetune_table.py); none: no such table
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # their settings (the learner field is per row)

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
        if self.self_label_rounds < 1:
            raise ValueError("self_label_rounds must be at least 1")
        if set(self.finetune) - set(LEARNERS):
            raise ValueError(f"finetune learners must be among {LEARNERS}, got {self.finetune}")

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


@dataclass
class IcmOutcome:
    """What one search delivered: labels by position in the search split (after its final pass)."""

    labels: dict[int, int]
    search_labeled: int  # examples the search itself labeled, before the final pass
    iterations: int  # search iterations run
    labeled_at: int | None  # the iteration at which the search itself had labeled every example
    seconds: float
    labeled_by_4n: int  # examples the search had labeled after 4 iterations per example (the paper's Table 5 budget)


def run_icm(backend: LanguageModel, task: Task, examples: Sequence[Example], config: SearchConfig,
            log: Log | None = None, what: str = "icm", progress: Progress | None = None) -> IcmOutcome:
    """One search over `examples` (inputs only) until its stopping rule, then its final pass.
    progress, if given, hears after every step how far the search is toward its own stop
    (Search.stop_progress: examples labeled, then quiet steps)."""
    scorer = make_scorer(backend, task, list(examples), RunConfig(task=task.name, dataset="eval", search=config))
    search = Search(scorer, config)
    every = max(1, len(examples) // 2)  # a line every half sweep: searches are the slow part on CPU
    started = time.perf_counter()
    budget, by_budget = 4 * len(examples), None
    while not search.done:
        record = search.step()
        if record.kind == "propose" and record.iteration <= budget:
            by_budget = record.labeled_count
        if progress is not None:
            phase, done, total = search.stop_progress()
            progress(done, total, f"search '{what}': {phase}")
        if log is not None and (record.iteration % every == 0 or search.done or record.kind == "final_pass"):
            log(f"  {what}: step {record.iteration} ({record.kind}), {record.labeled_count}/{len(examples)} labeled, "
                f"{time.perf_counter() - started:.0f} s")
    searched = search.labeled_by_search
    return IcmOutcome(search.label_map(), searched, search.iteration, search.progress.labeled_at,
                      time.perf_counter() - started, searched if by_budget is None else by_budget)


def _variant_config(base: SearchConfig, settings: dict, task: Task) -> SearchConfig:
    config = replace(base, **settings)
    if not config.use_consistency and task.rule == "none":
        config = replace(config, use_consistency=True)  # without a rule the ablation is the same search
    return config


def _searches(backend: LanguageModel, task: Task, examples: Sequence[Example], variants: dict[str, dict],
              base: SearchConfig, say: Log, progress: Progress | None = None,
              done: Callable[[], None] = lambda: None) -> dict[str, IcmOutcome]:
    """One seed's ICM searches (inputs only). Variants whose settings resolve to the same search
    (e.g. the defaults and their own objective x calibration row) share one run. done() after each search run."""
    outcomes: dict[str, IcmOutcome] = {}
    by_config: dict[SearchConfig, str] = {}
    for method, settings in variants.items():
        config = _variant_config(base, settings, task)
        if config in by_config:
            outcomes[method] = outcomes[by_config[config]]
            say(f"seed {base.seed}: '{method}' is the same search as '{by_config[config]}'")
            continue
        say(f"seed {base.seed}: ICM search '{method}' on {len(examples)} examples")
        outcomes[method] = run_icm(backend, task, examples, config, say, method, progress)
        by_config[config] = method
        done()
    return outcomes


# ---- the whole comparison ------------------------------------------------------------------

EVALUATION = "evaluation"  # the name of the whole evaluation's progress (jobs done of jobs)


def _job_count(config: "EvalConfig", variants: dict[str, dict], base: SearchConfig, task: Task) -> int:
    """How many jobs `evaluate` runs: baselines, distinct searches, test rows, fine-tunings (the
    learners' preparation and each row). The progress bar's total; its ETA is jobs-weighted, so it
    settles once a seed's searches (the slow jobs) have run."""
    methods = set(config.methods)
    fixed = len(methods & {ZERO_SHOT, ZERO_SHOT_LABELS, SELF_LABELS})
    learners = len(config.finetune)
    per_seed = 0
    for seed in config.seeds:
        per_seed += len({_variant_config(replace(base, seed=seed), v, task) for v in variants.values()})
    tested = [m for m in config.methods if m != ZERO_SHOT]
    tuned = [m for m in tested if m != PERTURBED]
    return fixed + learners + per_seed + len(config.seeds) * (len(tested) + learners * len(tuned))


@dataclass
class EvalResult:
    rows: pd.DataFrame  # one row per (table, method, seed): table, method, seed, accuracy, n_test, n_demos, extras
    config: dict  # EvalConfig plus what was resolved: split, model, sizes, wall time
    split: Split
    icm_labels: dict[tuple[str, int], dict[str, int]]  # (method, seed) -> uid -> label the search gave
    seconds: float

    def save(self, store, name: str) -> int:
        return store.save_eval(name, self.config, self.rows)


def evaluate(dataset, backend: LanguageModel, config: EvalConfig, log: Log | None = None,
             on_seed: Callable[["EvalResult"], None] | None = None, progress: Progress | None = None) -> EvalResult:
    """Run every method of `config` on `dataset` (a LoadedDataset with gold); see the module docstring.

    on_seed, if given, receives the result so far after each seed (config["complete"] False),
    so a caller can save it before the next seed's searches start. progress, if given, hears
    progress(jobs done, jobs, "evaluation") after each job (a baseline, a search, a test row, a
    fine-tuning) and each job's own progress under its name."""
    say = log or (lambda message: None)
    if dataset.gold is None:
        raise ValueError(f"{dataset.name}: evaluation needs gold labels (a gold/label column)")
    started = time.perf_counter()
    task: Task = dataset.task
    split = split_by_group(dataset.examples, config.search_size, config.test_size, config.split_seed, config.size_unit)
    search_examples = [dataset.examples[i] for i in split.search]
    search_gold = np.array([int(dataset.gold[i]) for i in split.search])  # demos and label accuracy only
    tests = [dataset.examples[i] for i in split.test]
    test_gold = np.array([int(dataset.gold[i]) for i in split.test])
    steps = config.steps if config.steps is not None else config.search.steps
    base = replace(config.search, steps=steps, final_pass=True)  # every exported label set covers the split
    methods = set(config.methods)
    # The test table's demonstrations: the whole search split in one seeded order, as many as fit.
    pool_order = {seed: np.random.default_rng([seed, 1]).permutation(len(search_examples)).tolist() for seed in config.seeds}
    # One count for every seed, the smallest that fits: each seed's order puts other examples first.
    count = min(fit_demo_count(backend, task, [search_examples[k] for k in order], tests, config.max_demos)
                for order in pool_order.values())
    if count == 0 and methods - {ZERO_SHOT}:  # every row but zero-shot is many-shot
        raise ValueError(
            f"no demonstration fits the context window ({backend.context_window} tokens) before the longest test query: "
            "the test table would compare labels at 0 demonstrations; use a longer-context model or shorter examples")
    say(f"split: {len(search_examples)} search examples, {len(tests)} test examples "
        f"({config.size_unit}: {config.search_size} + {config.test_size}); searches stop by '{base.stop}' "
        f"(cap {steps} steps) and end with the final pass; test prompts carry {count} demonstrations")

    variants = {m: v for m, v in icm_variants().items() if m in methods or (m == ICM and PERTURBED in methods)}
    jobs = _job_count(config, variants, base, task)
    finished = 0

    def job_done() -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, jobs, EVALUATION)

    if progress is not None:
        progress(0, jobs, EVALUATION)
    rows: list[dict] = []
    info = backend.info
    info = dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(vars(info))

    def resolved_config(running_seed: int | None) -> dict:
        """The config plus what was resolved; running_seed: None once complete, else the last seed done."""
        return config.to_dict() | {
            "steps_resolved": steps, "n_demos": count,
            "dataset": {"name": dataset.name, "source": dataset.source, "task": task.to_dict(), "n_examples": len(dataset.examples)},
            "backend": info | {"context_window": backend.context_window},
            "split": {"search_uids": [e.uid for e in search_examples], "test_uids": [e.uid for e in tests]},
            "wall_seconds": time.perf_counter() - started,
            "complete": running_seed is None,
            "seeds_done": list(config.seeds) if running_seed is None else list(config.seeds[: config.seeds.index(running_seed) + 1]),
        }

    def label_row(method: str, seed: int | None, labels: Sequence[int], seconds: float, **extra) -> None:
        """A label-table row: the accuracy of labels over the whole search split (None: unlabeled)."""
        given = [k for k, y in enumerate(labels) if y is not None]
        accuracy = float(np.mean([labels[k] == search_gold[k] for k in given])) if given else None
        rows.append({"table": LABEL_TABLE, "method": method, "seed": seed, "accuracy": accuracy,
                     "n_test": len(search_examples), "n_demos": None, "coverage": len(given) / len(search_examples),
                     "share_true": float(np.mean([labels[k] for k in given])) if given else None,
                     "labels": [None if y is None else int(y) for y in labels], "label_seconds": seconds, **extra})
        say(f"labels {method} (seed {seed}): accuracy {'n/a' if accuracy is None else f'{accuracy:.3f}'} "
            f"on {len(given)}/{len(search_examples)} search examples")

    def test_row(method: str, seed: int | None, log_odds: np.ndarray, demos: Sequence[int], labels: Sequence[int],
                 seconds: float, **extra) -> None:
        by_rule = {rule: float(np.mean(decide(log_odds, rule) == test_gold)) for rule in DECISION_RULES}
        predictions = decide(log_odds, config.decision)
        demo_accuracy = float(np.mean([y == search_gold[k] for k, y in zip(demos, labels)])) if len(demos) else None
        rows.append({
            "table": TEST_TABLE, "method": method, "seed": seed, "accuracy": by_rule[config.decision], "n_test": len(tests),
            "n_demos": len(demos), "demo_accuracy": demo_accuracy, "demo_uids": [search_examples[k].uid for k in demos],
            "demo_labels": [int(y) for y in labels], "predictions": predictions.tolist(),
            "log_odds": [float(v) for v in log_odds], "predict_seconds": seconds,
            **{f"accuracy_{rule}": value for rule, value in by_rule.items()}, **extra,
        })
        others = ", ".join(f"{rule} {value:.3f}" for rule, value in by_rule.items() if rule != config.decision)
        say(f"test {method} (seed {seed}): accuracy {by_rule[config.decision]:.3f} ({config.decision}; {others}) "
            f"on {len(tests)} test examples with {len(demos)} demonstrations")

    # Deterministic methods (no seed): computed once.
    fixed_labels: dict[str, list[int]] = {}
    if ZERO_SHOT in methods:
        began = time.perf_counter()
        test_row(ZERO_SHOT, None, label_log_odds(backend, task, (), tests, say, f"test {ZERO_SHOT}", progress), [], [],
                 time.perf_counter() - began)
        job_done()
    if ZERO_SHOT_LABELS in methods:
        began = time.perf_counter()
        fixed_labels[ZERO_SHOT_LABELS], _ = zero_shot_labels(backend, task, search_examples, config.decision, say, progress)
        label_row(ZERO_SHOT_LABELS, None, fixed_labels[ZERO_SHOT_LABELS], time.perf_counter() - began)
        job_done()
    if SELF_LABELS in methods:
        began = time.perf_counter()
        fixed_labels[SELF_LABELS], rounds = self_labels(backend, task, search_examples, config.decision,
                                                        config.self_label_rounds, say, progress)
        label_row(SELF_LABELS, None, fixed_labels[SELF_LABELS], time.perf_counter() - began, rounds=rounds)
        job_done()

    tuner = None
    if config.finetune:
        from .finetune_table import FinetuneRows

        tuner = FinetuneRows(backend, task, search_examples, tests, test_gold, config.finetune, config.learner,
                             tuple(DECISION_RULES), say, progress, job_done)

    icm_labels: dict[tuple[str, int], dict[str, int]] = {}
    for seed in config.seeds:
        outcomes = _searches(backend, task, search_examples, variants, replace(base, seed=seed), say, progress, job_done)
        labels_by: dict[str, list[int]] = {}
        for method, outcome in outcomes.items():
            labels_by[method] = [outcome.labels.get(k) for k in range(len(search_examples))]
            icm_labels[(method, seed)] = {search_examples[k].uid: y for k, y in outcome.labels.items()}
            reached = outcome.labeled_at
            label_row(method, seed, labels_by[method], outcome.seconds,
                      search_share=outcome.search_labeled / len(search_examples), iterations=outcome.iterations,
                      search_share_at_4n=outcome.labeled_by_4n / len(search_examples),
                      labeled_at=reached,
                      iterations_per_example=(reached if reached is not None else outcome.iterations) / len(search_examples),
                      search_config=dataclasses.asdict(replace(base, seed=seed, **variants[method])))
        if RANDOM_LABELS in methods:
            labels_by[RANDOM_LABELS] = random_labels(len(search_examples), seed)
            label_row(RANDOM_LABELS, seed, labels_by[RANDOM_LABELS], 0.0)
        labels_by.update(fixed_labels)

        demos = pool_order[seed][:count]
        gold_demos = [int(search_gold[k]) for k in demos]
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
            began = time.perf_counter()
            log_odds = label_log_odds(backend, task, demo_prefix(task, [search_examples[k] for k in demos], labels), tests,
                                      say, f"test {method} (seed {seed})", progress)
            test_row(method, seed, log_odds, demos, labels, time.perf_counter() - began, **extra)
            job_done()
            if tuner is not None and method != PERTURBED:  # fine-tuned on the whole split under these labels
                trained_on = search_gold.tolist() if method == GOLD else labels_by[method]
                rows.extend(tuner.rows(method, seed, trained_on, config.decision))

        if on_seed is not None:  # a long evaluation keeps every finished seed, whatever happens next
            on_seed(EvalResult(pd.DataFrame(rows), resolved_config(seed), split, icm_labels, time.perf_counter() - started))

    return EvalResult(pd.DataFrame(rows), resolved_config(None), split, icm_labels, time.perf_counter() - started)
