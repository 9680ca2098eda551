"""Salience: do trivial surface features of the inputs (length, frequent words, order, the group)
predict a run's labels about as well as the model does? Labels that follow such a feature may
follow it rather than the concept the researcher meant. Gold is never read here."""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..core.tasks import Example, Task
from .statistics import ALPHA, auroc

SALIENCE_ALARM = 0.85  # a surface feature predicting the labels this well (AUROC) is a warning by itself
SALIENCE_NEAR = 0.05  # ...and so is one within this of the model's own margin
SALIENCE_FLOOR = 0.65  # below this a feature is too weak to mention, however weak the model is
PERMUTATIONS = 2000  # relabelings for the salience test (seeded: a report is reproducible)
# A salience warning also needs this many examples of each label. The permutation test asks whether
# the labels are independent of the feature; with few of one label it cannot tell labels that follow
# a feature from a sample in which the concept happens to go with it. Simulated (normal feature,
# AUROC 0.7 for the concept in the population, a common, benign amount): the sample AUROC reaches the
# 0.85 alarm in 19% of samples with 12 + 4 examples, 13% with 8 + 8, 4.5% with 16 + 16, 0.6% with 32 + 32.
MIN_PER_LABEL = 8
TOP_WORDS = 20
_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class SalienceCheck:
    features: pd.DataFrame  # feature, auroc, strength = max(auroc, 1 - auroc), p (family-wise permutation), by strength
    model_auroc: float  # the run's own P(True) margin against its labels
    warnings: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)  # strong-looking features too few examples can't back
    group_feature: str | None = None  # the name of the group feature, when the labels follow the group (a warning)


def example_text(task: Task, example: Example) -> str:
    """The example's task fields, joined: what surface features and previews are read from."""
    return " | ".join(str(example.fields[name]) for name in task.fields)


def surface_features(task: Task, examples: Sequence[Example], top_words: int = TOP_WORDS) -> dict[str, np.ndarray]:
    """Trivial features of each input: its length, whether it holds each of the most frequent
    words, and for pairwise tasks its order and which response is longer."""
    texts = [example_text(task, e) for e in examples]
    features = {"length (characters)": np.array([len(t) for t in texts], dtype=float)}
    words = [set(_WORD.findall(t.lower())) for t in texts]
    counts = Counter(w for found in words for w in found)
    # most frequent first, ties alphabetical (most_common keeps the order words were met in, which for
    # words out of a set changes with each process's string hashing); a word in every input says nothing
    common = [w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if c < len(texts)][:top_words]
    for word in common:
        features[f"contains '{word}'"] = np.array([word in found for found in words], dtype=float)
    if task.pairwise_fields is not None:
        first, second = task.pairwise_fields
        features["order (key 'ab')"] = np.array([e.key == "ab" for e in examples], dtype=float)
        features[f"{first} longer than {second} (characters)"] = np.array(
            [len(str(e.fields[first])) - len(str(e.fields[second])) for e in examples], dtype=float)
    return features


def group_share_auroc(groups: Sequence, y: np.ndarray) -> np.ndarray:
    """How well an example's group predicts its label: the AUROC, one-sided (sharing, not opposing),
    of the share of True among the OTHER examples of its group (1/2 for an example alone in its
    group). y: [n] or [P, n] labelings; returns [P]. Leaving the example out keeps its own label
    out of its score; that makes the statistic lean below 1/2 under chance, which the permutation
    test accounts for."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    codes, _ = pd.factorize(pd.Series(list(groups), dtype=object), use_na_sentinel=False)
    onehot = np.zeros((y.shape[1], codes.max() + 1 if len(codes) else 0))
    onehot[np.arange(len(codes)), codes] = 1
    sizes = onehot.sum(axis=0)[codes]
    sums = (y @ onehot)[:, codes]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(sizes > 1, (sums - y) / np.maximum(sizes - 1, 1), 0.5)
    positives = y.sum(axis=1)
    negatives = y.shape[1] - positives
    ranks = pd.DataFrame(share).rank(axis=1, method="average").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def permutation_p_values(features: Mapping[str, np.ndarray], y: Sequence[int], strengths: Sequence[float],
                         permutations: int = PERMUTATIONS, seed: int = 15, groups: Sequence | None = None) -> np.ndarray:
    """Family-wise p-value of each feature's strength (max(AUROC, 1 - AUROC)): the share of random
    relabelings (the labels shuffled, so the same count of each) under which ANY of the features
    is at least that strong (Westfall-Young max-T). It holds for every n, ties and binary features
    included, and for the many features tried at once. A feature's ranks do not depend on the
    labels, so each relabeling's AUROCs are one matrix product. With `groups`, the last strength is
    group_share_auroc's, and it joins the maximum (it depends on the labels: recomputed per relabeling)."""
    y = np.asarray(y, dtype=int)
    positives, negatives = int(y.sum()), int(len(y) - y.sum())
    if not features or not positives or not negatives:
        return np.full(len(strengths), np.nan)
    ranks = np.stack([pd.Series(v).rank(method="average").to_numpy() for v in features.values()])  # [k, n]
    rng = np.random.default_rng([seed, len(y), positives])
    strongest = []
    for start in range(0, permutations, 256):  # in blocks: [block, n] relabelings at a time
        shuffled = np.stack([rng.permutation(y) for _ in range(min(256, permutations - start))]).astype(float)
        areas = (shuffled @ ranks.T - positives * (positives + 1) / 2) / (positives * negatives)  # [block, k]
        strength = np.maximum(areas, 1 - areas).max(axis=1)
        if groups is not None:
            strength = np.maximum(strength, group_share_auroc(groups, shuffled))
        strongest.append(strength)
    strongest = np.concatenate(strongest)
    observed = np.asarray(strengths, dtype=float)
    p = (1 + (strongest[None, :] >= observed[:, None] - 1e-12).sum(axis=1)) / (permutations + 1)
    return np.where(np.isnan(observed), np.nan, p)


def salience_check(task: Task, examples: Sequence[Example], labels: Mapping[int, int],
                   model_true_odds: Mapping[int, float], alpha: float = ALPHA) -> SalienceCheck:
    """AUROC of each surface feature for the run's labels, against the AUROC of the model's own
    P(True) margin: labels that a length or a word predicts as well as the model does may follow
    that feature rather than the task's concept. A warning also needs the feature's strength to be
    unlikely for a random labeling of these examples (family-wise permutation p < alpha) and at
    least MIN_PER_LABEL examples of each label; otherwise it reads "too few examples to tell"."""
    chosen = sorted(labels)
    y = [int(labels[e]) for e in chosen]
    features = surface_features(task, [examples[e] for e in chosen])
    rows = []
    for name, values in features.items():
        area = auroc(values, y)
        rows.append((name, area, max(area, 1 - area) if not math.isnan(area) else float("nan")))
    # Which group (TruthfulQA: which question) an example belongs to is a feature too: labels that
    # follow the question, not the claim, are a concept more salient than the one intended. Only
    # where no consistency rule ties a group's labels together (there it is the rule's doing).
    groups = [examples[e].group for e in chosen]
    grouped = task.rule == "none" and len(set(groups)) < len(groups) and None not in groups
    if grouped and y:
        area = float(group_share_auroc(groups, np.asarray(y))[0])
        rows.append((f"its {task.group_field or 'group'} (the other examples' share True)", area, area))
    table = pd.DataFrame(rows, columns=["feature", "auroc", "strength"])
    table["p"] = permutation_p_values(features, y, table["strength"].to_numpy(), groups=groups if grouped else None)
    table = table.sort_values(["strength", "p", "feature"], ascending=[False, True, True], kind="stable")
    scored = [e for e in chosen if not pd.isna(model_true_odds.get(e, np.nan))]
    model = auroc([model_true_odds[e] for e in scored], [labels[e] for e in scored]) if scored else float("nan")
    fewest = min(sum(y), len(y) - sum(y)) if y else 0
    warnings, inconclusive, group_feature = [], [], None
    for name, _, strength, p in table.itertuples(index=False):
        if math.isnan(strength) or strength < SALIENCE_FLOOR:
            continue
        if strength >= SALIENCE_ALARM or (not math.isnan(model) and strength >= model - SALIENCE_NEAR):
            finding = (f"{name} predicts the labels with AUROC {strength:.2f} (the model's own margin: {model:.2f}; "
                       f"permutation p = {p:.2g} over {len(table)} features)")
            if p < alpha and fewest >= MIN_PER_LABEL:
                warnings.append(f"salience: {finding}")
                if grouped and name == rows[-1][0]:
                    group_feature = name
            elif p >= alpha:
                inconclusive.append(f"too few examples to tell: {finding}; random labels of these {len(y)} "
                                    f"examples make some feature that strong too often")
            else:
                inconclusive.append(f"too few examples to tell: {finding}, but with {fewest} examples of one "
                                    f"label (fewer than {MIN_PER_LABEL}) the concept itself may go with it by chance")
    return SalienceCheck(table.reset_index(drop=True), model, warnings, inconclusive, group_feature)
