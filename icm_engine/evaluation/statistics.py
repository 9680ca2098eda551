"""Small exact statistics the trust checks share: intervals, tests and agreement measures for a
few dozen binary labels, with no scipy (the studio's dependencies stay as they are)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

# On a few examples a share gap or a feature's AUROC is mostly noise, so every warning must also be
# unlikely by chance; one that is not reads "too few examples to tell" instead.
ALPHA = 0.05  # the chance, under "nothing to see", that a warning fires anyway


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when nothing was judged. Unlike p +- z*se
    it stays inside [0, 1] and keeps its coverage near 0 or 1 and for small n."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def binomial_cdf(k: int, n: int, p: float = 0.5) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exact (summed in log space; no scipy)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
             for i in range(k + 1)]
    peak = max(terms)
    return min(1.0, math.exp(peak) * sum(math.exp(t - peak) for t in terms))


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve of `scores` for labels 1 vs 0, by the rank-sum formula (ties get
    their average rank, so a constant score gives 0.5); NaN when one class is missing."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def cohens_kappa(a: Sequence[int], b: Sequence[int]) -> float:
    """Agreement beyond what two labelings with these shares of True would reach by chance:
    1 identical, 0 chance, -1 mirror images. NaN when both are constant and chance explains all."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if not len(a):
        return float("nan")
    observed = float((a == b).mean())
    expected = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return float("nan") if expected >= 1 else (observed - expected) / (1 - expected)
