"""Can these labels be trusted? Checks of one run that need no gold (issue 15).

Mutual predictability finds whatever concept the model finds most salient, and a coherent
labeling can be the mirror image of the intended one. So each check here compares the run's
labels with something independent of the search:

- polarity: the model's own zero-shot reading, centered over the dataset (a labeling that
  disagrees with it beyond chance is possibly inverted);
- balance: the share of True over the run, against the model's content-free prior and the
  zero-shot share;
- review queue: each example's margin under the run's calibration, its flips, and whether seeds agree;
- audit: a Wilson interval for accuracy from a person's verdicts on a seeded random sample;
- salience: how well trivial surface features (length, frequent words, order) predict the labels;
- seeds: agreement and Cohen's kappa between runs that differ only by seed;
- baselines: cheap labelers from the same model (zero-shot, self-labeling, a CCS probe on hidden
  states, icm_engine.ccs), each one's agreement with the run and the others, and its labels.

`diagnose` runs them all; the CLI (`icm trust`) and the studio's Trust page both call it.
Gold labels are never read here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..backends.base import HiddenStatesUnavailable
from ..core.tasks import Example, Task
from ..runs.export import labeled_frame
from ..store.database import Store
from ..store.run_loader import load_run
from .baselines import Log, Progress, decide, label_log_odds, self_labels
from .ccs import CCSResult, ccs_labels
from .salience import SALIENCE_ALARM, SalienceCheck, example_text, group_share_auroc, salience_check
from .statistics import ALPHA, binomial_cdf, cohens_kappa, wilson_interval

POLARITY_SDS = 2.0  # agreement this many binomial sds below 1/2 flags a labeling as possibly inverted
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # contextual calibration (Zhao et al. 2021): inputs that say nothing
ONE_SIDED = 0.8  # a share of True above this (or below 1 - this) makes a labeling one-sided
BALANCE_GAP = 0.25  # share of True this far from the zero-shot share is worth a look
PRIOR_LEAN = 0.2  # a content-free P(True) this far from 1/2 is a lean the search could follow
# "Unconfirmed" needs the data to rule support out: every reading's 95% Wilson interval for its
# agreement with the run must end below this. A reading of the concept as good as the calibrated
# zero-shot one on the sentiment sentences (65% accurate) agrees with a 90%-correct run on ~62%, so
# a bound under 0.7 excludes such a reading; an interval reaching above it is "too few to tell".
SUPPORT_PLAUSIBLE = 0.7
CCS_BASELINE = "CCS probe"
REVIEW_ROWS = 50  # rows of the review queue a report shows
PREVIEW_CHARS = 200  # of an example's text in tables


# -- results ------------------------------------------------------------------------------

@dataclass
class PolarityCheck:
    n: int  # labeled examples compared
    agreement: float  # share of them whose run label equals the calibrated zero-shot label
    p_value: float  # one-sided: P(agreement this low or lower) if labels agreed with the model by coin flip
    threshold: float  # agreement below this flags the labeling
    verdict: str  # "agrees", "possibly inverted" or "inconclusive"
    disagreements: pd.DataFrame  # the most confident zero-shot readings the run contradicts


@dataclass
class BalanceCheck:
    by_iteration: pd.DataFrame  # iteration, labeled, true, share_true (flips replayed)
    share_true: float  # in the run's final labels
    content_free_p_true: float | None  # the model's P(True) for inputs that say nothing
    zero_shot_share_true: float | None  # share True of the calibrated zero-shot labels, whole dataset
    zero_shot_raw_share_true: float | None  # ...and of the uncalibrated (argmax) ones: the model's lean
    warnings: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)  # what would be a warning on more examples


@dataclass
class SupportCheck:
    readings: pd.DataFrame  # reading, n, agreement, kappa, p: the model's readings made without the search
    supported_by: list[str]  # those that agree with the run beyond chance
    warnings: list[str] = field(default_factory=list)
    confounded: dict[str, float] = field(default_factory=dict)  # readings that follow the run's group feature too
    inconclusive: list[str] = field(default_factory=list)  # unsupported, but too few examples to rule support out


@dataclass
class SeedAgreement:
    run_ids: list[int]
    pairs: pd.DataFrame  # run_a, run_b, n_common, agreement, kappa
    final_u: pd.DataFrame  # run_id, seed, u
    disagreements: pd.DataFrame  # example, uid, text and each run's label, where they differ
    warnings: list[str] = field(default_factory=list)


@dataclass
class AccuracyEstimate:
    correct: int
    n: int
    accuracy: float | None
    low: float
    high: float

    def describe(self) -> str:
        if not self.n:
            return "no verdicts yet"
        return (f"{self.correct} of {self.n} judged correct: accuracy {self.accuracy:.0%}, "
                f"95% Wilson interval {self.low:.0%} to {self.high:.0%}")


@dataclass
class TrustReport:
    run_id: int
    run_name: str
    dataset_name: str
    n_examples: int
    n_labeled: int
    polarity: PolarityCheck | None
    balance: BalanceCheck
    review: pd.DataFrame  # every labeled example, most doubtful first
    salience: SalienceCheck
    seeds: SeedAgreement | None
    audit: AccuracyEstimate | None
    baselines: pd.DataFrame | None = None  # agreement matrix of the run and cheap labelers, on the run's labeled examples
    notes: list[str] = field(default_factory=list)  # what was skipped and why
    baseline_labels: dict[str, np.ndarray] = field(default_factory=dict)  # each cheap labeler's 0/1, whole dataset
    baseline_p_true: dict[str, np.ndarray] = field(default_factory=dict)  # ...and its P(True), where it has one
    ccs: CCSResult | None = None
    ccs_unavailable: str | None = None  # why there is no CCS baseline, when a model was asked
    support: SupportCheck | None = None  # does anything the search did not produce agree with its labels?

    @property
    def warnings(self) -> list[str]:
        found = []
        if self.polarity is not None and self.polarity.verdict == "possibly inverted":
            found.append(f"possibly inverted: only {self.polarity.agreement:.0%} of {self.polarity.n} labels agree "
                         f"with the model's calibrated zero-shot reading (p = {self.polarity.p_value:.2g})")
        found += self.support.warnings if self.support else []
        found += self.balance.warnings + self.salience.warnings + (self.seeds.warnings if self.seeds else [])
        return found

    @property
    def inconclusive(self) -> list[str]:
        """Checks that would warn on more examples but, on these, could be chance."""
        return (self.support.inconclusive if self.support else []) + self.balance.inconclusive + self.salience.inconclusive


# -- the checks ---------------------------------------------------------------------------

def polarity_check(labels: Mapping[int, int], zero_shot_odds: np.ndarray, uids: Sequence[str],
                   sds: float = POLARITY_SDS) -> PolarityCheck:
    """Agreement of the run's labels with the zero-shot labels centered over the whole dataset
    (`zero_shot_odds`: one raw log-odds per example): centering removes the model's lean to a
    label word, so what remains is the concept it reads in each input without demonstrations."""
    centered = np.asarray(zero_shot_odds, dtype=float) - float(np.mean(zero_shot_odds))
    zero_shot = decide(np.asarray(zero_shot_odds, dtype=float), "centered")
    examples = sorted(int(e) for e in labels)
    n = len(examples)
    agree = sum(int(labels[e]) == int(zero_shot[e]) for e in examples)
    threshold = 0.5 - sds * 0.5 / math.sqrt(n) if n else 0.0
    above = 0.5 + sds * 0.5 / math.sqrt(n) if n else 1.0
    agreement = agree / n if n else float("nan")
    verdict = ("possibly inverted" if n and agreement < threshold else
               "agrees" if n and agreement > above else "inconclusive")
    contradicted = [e for e in examples if int(labels[e]) != int(zero_shot[e])]
    table = pd.DataFrame({"example": contradicted, "uid": [uids[e] for e in contradicted],
                          "run_label": [int(labels[e]) for e in contradicted],
                          "zero_shot_label": [int(zero_shot[e]) for e in contradicted],
                          "zero_shot_centered_log_odds": [float(centered[e]) for e in contradicted]})
    table = table.reindex(table["zero_shot_centered_log_odds"].abs().sort_values(ascending=False).index)
    return PolarityCheck(n, agreement, binomial_cdf(agree, n), threshold, verdict, table.head(10).reset_index(drop=True))


def support_check(labels: Mapping[int, int], readings: Mapping[str, Sequence[int]], alpha: float = ALPHA,
                  inverted: bool = False, confounded: Mapping[str, float] | None = None) -> SupportCheck:
    """Whether any of the model's readings made without the search (its calibrated zero-shot labels,
    the CCS probe) agrees with the run's labels beyond chance: one-sided exact binomial p of the
    agreement under coin flips, Bonferroni over the readings. No warning raised does not make a
    labeling trustworthy; a coherent labeling that nothing else in the model backs may be a concept
    other than the intended one, or none (the paper's section 4.2: chance where the concept was not
    salient). `inverted`: polarity already flagged the run, which says more than this would.
    `confounded`: readings that follow the same surface feature the run was flagged for (reading ->
    that feature's AUROC for its labels): their agreement is the shared feature's, not a confirmation,
    so they do not count."""
    confounded = dict(confounded or {})
    examples = sorted(labels)
    y = [int(labels[e]) for e in examples]
    rows = []
    for name, other in readings.items():
        theirs = [int(other[e]) for e in examples]
        agree = int(np.sum(np.equal(y, theirs)))
        n = len(examples)
        rows.append((name, n, agree / n if n else float("nan"), cohens_kappa(y, theirs),
                     1 - binomial_cdf(agree - 1, n) if n else float("nan")))
    table = pd.DataFrame(rows, columns=["reading", "n", "agreement", "kappa", "p"])
    level = alpha / max(1, len(rows))
    supported = [r.reading for r in table.itertuples(index=False) if r.p < level and r.reading not in confounded]
    warnings, inconclusive = [], []
    if rows and examples and not supported and not inverted:
        said = "; ".join(f"{r.reading} {r.agreement:.0%} (p = {r.p:.2g})" for r in table.itertuples(index=False))
        shared = ("; those that agree follow the flagged group feature too ("
                  + ", ".join(f"{k}: AUROC {v:.2f}" for k, v in confounded.items())
                  + "), a shared surface feature rather than a confirmation") if confounded else ""
        message = (f"none of the model's readings made without the search backs these labels beyond chance ({said}; "
                   f"needed p < {level:.2g}{shared})")
        # upper end of each unconfounded reading's 95% interval for its agreement with the run
        highest = max((wilson_interval(int(round(r.agreement * r.n)), r.n)[1] for r in table.itertuples(index=False)
                       if r.reading not in confounded), default=0.0)
        if highest < SUPPORT_PLAUSIBLE:
            warnings.append(f"unconfirmed: {message}: the search may have found another concept than the intended "
                            f"one, or none")
        else:
            inconclusive.append(f"too few examples to tell: {message}, but on {len(examples)} examples agreement up to "
                                f"{highest:.0%} is within the interval, as a reading of the intended concept could give")
    return SupportCheck(table, supported, warnings, confounded, inconclusive)


def content_free_p_true(backend, task: Task) -> float:
    """The model's P(True) (over the two label words) with every task field set to an input that
    says nothing, averaged over CONTENT_FREE_INPUTS: its prior, whatever the example."""
    probes = [Example(uid=f"content-free-{k}", fields={name: text for name in task.fields})
              for k, text in enumerate(CONTENT_FREE_INPUTS)]
    odds = label_log_odds(backend, task, (), probes)
    return float(np.mean(1 / (1 + np.exp(-odds))))


def label_share_by_iteration(flips: pd.DataFrame, n_examples: int) -> pd.DataFrame:
    """Labeled count and share of True after each iteration that changed a label, by replaying
    the flips in order (a flip to no label, e.g. an exclusion, removes the example)."""
    columns = ["iteration", "labeled", "true", "share_true"]
    if not len(flips):
        return pd.DataFrame(columns=columns)
    current = np.full(n_examples, -1)
    labeled = true = 0
    rows = []
    ordered = flips.sort_values(["seq", "ord"])
    for iteration, example, new in zip(ordered["iteration"], ordered["example"], ordered["new_label"]):
        new = -1 if pd.isna(new) else int(new)
        old = current[int(example)]
        labeled += int(new >= 0) - int(old >= 0)
        true += int(new == 1) - int(old == 1)
        current[int(example)] = new
        rows.append((int(iteration), labeled, true))
    frame = pd.DataFrame(rows, columns=columns[:3]).groupby("iteration", as_index=False).last()
    frame["share_true"] = frame["true"] / frame["labeled"].where(frame["labeled"] > 0)
    return frame


def discordant(labels: Mapping[int, int], other: Sequence[int]) -> tuple[int, int]:
    """(b, c): labeled examples the run calls True and `other` False, and the reverse."""
    b = sum(1 for e, y in labels.items() if y == 1 and int(other[e]) == 0)
    c = sum(1 for e, y in labels.items() if y == 0 and int(other[e]) == 1)
    return b, c


def balance_check(flips: pd.DataFrame, labels: Mapping[int, int], n_examples: int, prior: float | None,
                  zero_shot_odds: np.ndarray | None, alpha: float = ALPHA) -> BalanceCheck:
    """Share of True against the zero-shot share and the content-free prior. Each warning must
    also be unlikely by chance on this many examples (exact binomial tests: the share against 1/2;
    the run against the zero-shot labels on the same examples, McNemar's test on the examples they
    label differently); one that is not goes to `inconclusive` as "too few examples to tell"."""
    share = float(np.mean(list(labels.values()))) if labels else float("nan")
    n, n_true = len(labels), int(sum(labels.values()))
    centered = raw = zero_shot = None
    if zero_shot_odds is not None and len(zero_shot_odds):
        zero_shot = decide(zero_shot_odds, "centered")
        centered = float(zero_shot.mean())
        raw = float(decide(zero_shot_odds, "argmax").mean())
    warnings, inconclusive = [], []

    def judge(message: str, p: float) -> None:
        if p < alpha:
            warnings.append(f"{message} (p = {p:.2g})")
        else:
            inconclusive.append(f"too few examples to tell: {message}, but on {n} examples that is "
                                f"within chance (p = {p:.2g})")

    if labels and not 1 - ONE_SIDED <= share <= ONE_SIDED:
        judge(f"one-sided: {share:.0%} of the labels are True",
              min(1.0, 2 * binomial_cdf(min(n_true, n - n_true), n)))  # two-sided, against 1/2
    b, c = discordant(labels, zero_shot) if zero_shot is not None else (0, 0)
    if centered is not None and labels and abs(share - centered) > BALANCE_GAP:
        judge(f"balance: {share:.0%} True in the run against {centered:.0%} in the calibrated zero-shot labels",
              min(1.0, 2 * binomial_cdf(min(b, c), b + c)))  # McNemar, exact, two-sided
    # the run leans the prior's way, and further than the calibrated zero-shot labels do
    further = abs(share - 0.5) > abs((0.5 if centered is None else centered) - 0.5) + 0.1
    if prior is not None and labels and abs(prior - 0.5) > PRIOR_LEAN and (share - 0.5) * (prior - 0.5) > 0 and further:
        # one-sided McNemar: the run turns zero-shot labels the prior's way more often than back
        toward, away = (b, c) if prior > 0.5 else (c, b)
        judge(f"the labels lean the way the model's content-free prior does (P(True) = {prior:.2f} "
              f"for an empty input): the search may have found the model's bias, not the concept",
              binomial_cdf(away, toward + away) if zero_shot is not None else 1.0)
    return BalanceCheck(label_share_by_iteration(flips, n_examples), share, prior, centered, raw, warnings, inconclusive)


def label_changes(flips: pd.DataFrame) -> pd.Series:
    """Per example, how many times its label changed from one label to the other."""
    if not len(flips):
        return pd.Series(dtype=int)
    changed = flips["old_label"].notna() & flips["new_label"].notna() & (flips["old_label"] != flips["new_label"])
    return flips[changed].groupby("example").size()


def review_queue(frame: pd.DataFrame, texts: Sequence[str], changes: pd.Series,
                 seed_disputed: set[int] = frozenset()) -> pd.DataFrame:
    """The labeled examples most worth a person's look, most doubtful first: those the seeds
    disagree on, then by margin (the label's signed log-odds under the run's calibration, given
    the rest of the labels: below 0 the model itself prefers the other label), then by flips.
    Every labeled example is in it (an audit samples from it); show its head."""
    labeled = frame[frame["label"].notna()]
    queue = pd.DataFrame({
        "example": labeled.index.astype(int), "uid": labeled["uid"].to_numpy(),
        "text": [texts[i][:PREVIEW_CHARS] for i in labeled.index], "label": labeled["label_name"].to_numpy(),
        "margin": labeled["log_odds"].astype(float).to_numpy(), "flips": [int(changes.get(i, 0)) for i in labeled.index],
        "seeds_disagree": [int(i) in seed_disputed for i in labeled.index], "source": labeled["source"].to_numpy()})
    queue = queue.sort_values(["seeds_disagree", "margin", "flips"], ascending=[False, True, False], na_position="first")
    return queue.reset_index(drop=True)


def seed_runs(store: Store, run_id: int) -> list[int]:
    """Finished runs on the same dataset with the same settings as `run_id` apart from the seed
    (itself included, first)."""
    def settings(config: dict) -> dict:
        return dict(config, search={k: v for k, v in config.get("search", {}).items() if k != "seed"})

    run = store.run(run_id)
    others = store.runs(int(run["dataset_id"]))
    found = [run_id]
    for other in others[(others["run_id"] != run_id) & (others["status"] == "finished")]["run_id"]:
        if settings(store.run(int(other))["config"]) == settings(run["config"]):
            found.append(int(other))
    return found


def seed_agreement(store: Store, run_ids: Sequence[int], texts: Sequence[str] | None = None) -> SeedAgreement:
    """Pairwise agreement and Cohen's kappa of the runs' final labels (on examples both labeled),
    the spread of their final U, and the examples they disagree on."""
    finals = {}
    for r in run_ids:
        stored = store.labels(r)
        finals[r] = dict(zip(stored["example"].astype(int), stored["label"].astype(int)))
    pairs = []
    for k, a in enumerate(run_ids):
        for b in run_ids[k + 1:]:
            common = sorted(set(finals[a]) & set(finals[b]))
            la, lb = [finals[a][e] for e in common], [finals[b][e] for e in common]
            pairs.append((a, b, len(common), float(np.mean(np.equal(la, lb))) if common else float("nan"), cohens_kappa(la, lb)))
    pairs = pd.DataFrame(pairs, columns=["run_a", "run_b", "n_common", "agreement", "kappa"])
    final_u = []
    for r in run_ids:
        snapshot = store.load_snapshot(r)
        final_u.append((r, store.run(r)["config"].get("search", {}).get("seed"), None if snapshot is None else snapshot.u))
    final_u = pd.DataFrame(final_u, columns=["run_id", "seed", "u"])
    examples = sorted(set().union(*finals.values())) if finals else []
    disputed = [e for e in examples if len({finals[r][e] for r in run_ids if e in finals[r]}) > 1]
    disagreements = pd.DataFrame({"example": disputed})
    if texts is not None:
        disagreements["text"] = [texts[e][:PREVIEW_CHARS] for e in disputed]
    for r in run_ids:
        disagreements[f"run {r}"] = [finals[r].get(e) for e in disputed]
    warnings = []
    for row in pairs.itertuples(index=False):
        if not math.isnan(row.kappa) and row.kappa < 0.4:
            mirror = " (near mirror images: one may be inverted)" if row.kappa < -0.4 else ""
            warnings.append(f"seeds disagree: runs {row.run_a} and {row.run_b} have kappa {row.kappa:.2f} "
                            f"on {row.n_common} common labels{mirror}")
    return SeedAgreement(list(run_ids), pairs, final_u, disagreements, warnings)


def audit_sample(examples: Sequence[int], size: int, seed: int = 0) -> list[int]:
    """A seeded random sample of labeled examples for a person to judge (uniform, so the
    accuracy it estimates is that of the whole labeled set, not of the doubtful ones)."""
    pool = np.asarray(sorted(int(e) for e in examples), dtype=int)
    if not len(pool):
        return []
    picked = np.random.default_rng([seed, 15]).choice(pool, size=min(size, len(pool)), replace=False)
    return [int(e) for e in picked]


def accuracy_estimate(verdicts: Mapping[int, bool] | Sequence[bool]) -> AccuracyEstimate:
    """Accuracy of the labels from a person's verdicts (True: the label is right) on a random sample."""
    values = list(verdicts.values()) if isinstance(verdicts, Mapping) else list(verdicts)
    correct, n = int(sum(bool(v) for v in values)), len(values)
    low, high = wilson_interval(correct, n)
    return AccuracyEstimate(correct, n, correct / n if n else None, low, high)


def recorded_verdicts(events: pd.DataFrame) -> dict[int, bool]:
    """A person's verdicts on the search's labels, read back from the pins that record them: the
    first pin of an example that had a label says whether that label was right (pinned as it was)
    or wrong (pinned to the other label). A pin of an unlabeled example is a label, not a verdict."""
    if not len(events):
        return {}
    pins = events[(events["kind"] == "pin") & events["old_label"].notna()].sort_values("seq")
    first = pins.drop_duplicates("example", keep="first")
    return {int(r.example): int(r.old_label) == int(r.proposed_label) for r in first.itertuples()}


def baseline_agreement(labels: Mapping[int, int], baselines: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Share of the run's labeled examples on which each two labelings agree ("run" first, then
    each baseline's labels over the whole dataset): how much of the search a cheap labeler recovers."""
    examples = sorted(labels)
    named = {"run": [labels[e] for e in examples], **{k: [int(v[e]) for e in examples] for k, v in baselines.items()}}
    matrix = pd.DataFrame(index=list(named), columns=list(named), dtype=float)
    for a, la in named.items():
        for b, lb in named.items():
            matrix.loc[a, b] = float(np.mean(np.equal(la, lb))) if examples else float("nan")
    return matrix.rename_axis("labeling").reset_index()


# -- all of it ----------------------------------------------------------------------------

def diagnose(store: Store, run_id: int, backend=None, seed_run_ids: Sequence[int] | None = None,
             verdicts: Mapping[int, bool] | None = None, self_labeling: bool = False,
             log: Log | None = None, ccs: bool = True, progress: Progress | None = None) -> TrustReport:
    """Every check of one run. Without a backend the model-based parts (polarity, the content-free
    prior, the zero-shot share) are skipped with a note; seed_run_ids=None compares the run with
    seed_runs() (its finished siblings that differ only by seed). self_labeling adds iterated
    self-labeling to the baselines, at the cost of a few ICM evaluations of the whole dataset; ccs
    adds the CCS probe (two forwards per example and a small training), or says why it could not.
    progress, if given, hears the model's passes over the dataset (progress(done, total, what))."""
    stored = load_run(store, run_id)  # inputs only: gold is never read here
    run, task, examples = stored.run, stored.task, stored.examples
    texts = [example_text(task, e) for e in examples]
    frame = labeled_frame(store, run_id)
    flips = store.flips(run_id)
    labels = {int(i): int(y) for i, y in frame["label"].dropna().items()}
    notes = []
    zero_shot_odds = prior = None
    polarity = baselines = probe = unavailable = support = None
    p_true = {}
    if backend is None:
        notes.append("no model: polarity, the content-free prior and the zero-shot share were skipped")
    else:
        if log is not None:
            log(f"asking the model zero-shot about {len(examples)} examples")
        zero_shot_odds = label_log_odds(backend, task, (), examples, log, "zero-shot", progress)
        prior = content_free_p_true(backend, task)
        polarity = polarity_check(labels, zero_shot_odds, [e.uid for e in examples])
        # three decision rules over the same zero-shot log-odds: batch calibration (centered over the
        # dataset), contextual calibration (Zhao et al. 2021: less the content-free log-odds), none
        bounded = min(max(prior, 1e-6), 1 - 1e-6)  # a prior of exactly 0 or 1 has no finite log-odds
        prior_odds = math.log(bounded / (1 - bounded))
        readings_odds = {"zero-shot (centered)": zero_shot_odds - zero_shot_odds.mean(),
                         "zero-shot (contextual)": zero_shot_odds - prior_odds,
                         "zero-shot (argmax)": zero_shot_odds}
        cheap = {name: decide(odds, "argmax") for name, odds in readings_odds.items()}
        p_true = {name: 1 / (1 + np.exp(-odds)) for name, odds in readings_odds.items()}
        if self_labeling:
            cheap["self-labeling (centered)"] = np.asarray(self_labels(backend, task, examples, "centered", log=log, progress=progress)[0])
        if ccs:
            try:
                probe = ccs_labels(backend, task, examples, cheap["zero-shot (centered)"], log=log, progress=progress)
            except HiddenStatesUnavailable as error:
                unavailable = str(error)
                notes.append(f"CCS unavailable: {unavailable}")
            else:
                cheap[CCS_BASELINE], p_true[CCS_BASELINE] = probe.labels, probe.p_true
        baselines = baseline_agreement(labels, cheap)
        readings = {k: cheap[k] for k in ("zero-shot (centered)", CCS_BASELINE) if k in cheap}
        if probe is not None and not probe.stable:  # an unidentified probe is no evidence either way
            del readings[CCS_BASELINE]
            notes.append(f"the CCS probe is unstable (probes from different seeds agree on {probe.stability:.0%} of "
                         f"labels): left out of the support check")
    balance = balance_check(flips, labels, len(examples), prior, zero_shot_odds)
    odds = frame["log_odds"].astype(float)
    true_odds = {i: (odds[i] if y == 1 else -odds[i]) for i, y in labels.items()}
    salience = salience_check(task, examples, labels, true_odds)
    if backend is not None:
        confounded = {}
        if salience.group_feature is not None:  # the labels follow the group: do the readings follow it too?
            chosen = sorted(labels)
            groups = [examples[e].group for e in chosen]
            for name, other in readings.items():
                area = float(group_share_auroc(groups, np.array([int(other[e]) for e in chosen]))[0])
                if area >= SALIENCE_ALARM:
                    confounded[name] = area
        support = support_check(labels, readings, inverted=polarity.verdict == "possibly inverted",
                                confounded=confounded)
    ids = list(seed_run_ids) if seed_run_ids is not None else seed_runs(store, run_id)
    ids = [run_id] + [r for r in ids if r != run_id]
    seeds = seed_agreement(store, ids, texts) if len(ids) > 1 else None
    if seeds is None:
        notes.append("no other seed of this run to compare with (pass run ids, or finish runs that differ only by seed)")
    disputed = set() if seeds is None else set(seeds.disagreements["example"].astype(int))
    review = review_queue(frame, texts, label_changes(flips), disputed)
    audit = accuracy_estimate(verdicts) if verdicts else None
    dataset = store.datasets().set_index("dataset_id").loc[int(run["dataset_id"]), "name"]
    return TrustReport(run_id, str(run["name"]), str(dataset), len(examples), len(labels), polarity, balance, review,
                       salience, seeds, audit, baselines, notes,
                       {} if backend is None else {k: np.asarray(v, dtype=int) for k, v in cheap.items()}, p_true,
                       probe, unavailable, support)
