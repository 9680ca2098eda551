"""The cheapest fine-tuning: a logistic head on the frozen model's hidden state at the label position.

The head's log-odds for True are the model's own zero-shot log-odds (its label words read at the
same position) plus w.x + b, x the standardized hidden state of the chosen block:

    logit(x_i) = prior_i + w . x_i + b,    minimizing  mean_i logloss(y_i, logit) + (l2 / 2) |w|^2

so an untrained head is the model's zero-shot reading (b absorbs its lean to one label word) and
training moves it away at an L2 cost. That prior is why this learner can measure mutual
predictability for the scalable search: a plain linear probe on 640 dimensions predicts *any*
hyperplane labeling as well as the true one, while this head predicts best the labelings that
agree with what the model already reads (docs/scalable.md). Fit by Newton's method, exactly
and deterministically: a few steps of a (d+1)-square solve.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..backends.base import LanguageModel
from ..core.config import LearnerConfig
from ..core.tasks import Example, Task
from .base import Learner, Prepared, Trained, TrainProgress, check_labels, log_softmax_pair

NEWTON_STEPS = 50
NEWTON_TOLERANCE = 1e-8  # stop when the largest update of a weight is below this
PREPARE_BATCH = 64  # prompts per backend call: progress between calls


class HeadLearner(Learner):
    kind = "head"

    def __init__(self, backend: LanguageModel, task: Task, config: LearnerConfig = LearnerConfig()) -> None:
        super().__init__(task)
        self.backend, self.config = backend, config

    @property
    def layer(self) -> int:
        count = self.backend.hidden_layer_count  # raises HiddenStatesUnavailable for a server
        layer = round(count * 2 / 3) if self.config.layer == -1 else self.config.layer
        if not 0 <= layer <= count:
            raise ValueError(f"head layer {self.config.layer} is outside -1..{count} for {self.backend.name}")
        return layer

    def prepare(self, examples: Sequence[Example], progress: TrainProgress | None = None) -> Prepared:
        prompts = self.prompts(examples)
        layer, features, prior = self.layer, [], []
        for start in range(0, len(prompts), PREPARE_BATCH):
            chunk = prompts[start:start + PREPARE_BATCH]
            states, raw = self.backend.read_label_position([(p,) for p in chunk], [layer], self.task.label_words)
            features.append(states[0])
            prior.append(raw[:, 1] - raw[:, 0])
            if progress is not None:
                progress(min(start + PREPARE_BATCH, len(prompts)), len(prompts), "reading hidden states")
        return Prepared(list(examples), prompts,
                        np.concatenate(features) if features else np.zeros((0, 0), np.float32),
                        np.concatenate(prior) if prior else np.zeros(0), {"layer": layer})

    def fit(self, prepared: Prepared, indices: Sequence[int], labels: Sequence[int],
            progress: TrainProgress | None = None, seed: int = 0) -> "TrainedHead":
        indices, labels = check_labels(indices, labels)
        # Standardized over every prepared input (labels play no part), so l2 means the same on any model.
        mean = prepared.features.mean(axis=0).astype(np.float64)
        scale = prepared.features.std(axis=0).astype(np.float64) + 1e-6
        x = (prepared.features[indices] - mean) / scale
        weights, bias, curve = fit_logistic(x, labels, prepared.prior[indices], self.config.l2, progress)
        return TrainedHead(weights, bias, mean, scale, prepared.extra["layer"], curve)

    def zero_shot(self, prepared: Prepared) -> np.ndarray:
        return log_softmax_pair(prepared.prior)

    def load(self, folder: Path, meta: dict[str, Any]) -> "TrainedHead":
        saved = np.load(folder / "head.npz")
        return TrainedHead(saved["weights"], float(saved["bias"]), saved["mean"], saved["scale"],
                           int(saved["layer"]), list(meta.get("loss_curve", [])))


class TrainedHead(Trained):
    kind = "head"

    def __init__(self, weights: np.ndarray, bias: float, mean: np.ndarray, scale: np.ndarray, layer: int,
                 loss_curve: list[float]) -> None:
        self.weights, self.bias, self.mean, self.scale = weights, bias, mean, scale
        self.layer, self.loss_curve = layer, loss_curve

    def log_odds(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        if prepared.extra.get("layer") != self.layer:
            raise ValueError(f"this head reads block {self.layer}; the inputs were prepared at {prepared.extra.get('layer')}")
        indices = np.asarray(indices, dtype=int)
        x = (prepared.features[indices] - self.mean) / self.scale
        return prepared.prior[indices] + x @ self.weights + self.bias

    def label_logprobs(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        return log_softmax_pair(self.log_odds(prepared, indices))

    def save(self, folder: Path) -> None:
        np.savez(folder / "head.npz", weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale,
                 layer=self.layer)
        (folder / "head.json").write_text(json.dumps({"layer": self.layer, "dimensions": len(self.weights)}))


def fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray, l2: float,
                 progress: TrainProgress | None = None) -> tuple[np.ndarray, float, list[float]]:
    """Damped Newton for mean logloss(y, offset + x.w + b) + l2/2 |w|^2 (b unpenalized); returns
    (w, b, the loss after each step). A full Newton step can overshoot where the offset already
    saturates the sigmoid, so each step is halved until the loss goes down."""
    n, d = x.shape
    design = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    y = np.asarray(y, dtype=np.float64)
    penalty = np.full(d + 1, float(l2))
    penalty[-1] = 1e-6  # the bias is free; a whisker keeps the system solvable when every label is one class

    def loss_of(beta: np.ndarray) -> float:
        logit = offset + design @ beta
        return float(np.mean(np.logaddexp(0.0, logit) - y * logit) + 0.5 * beta @ (penalty * beta))

    beta, curve = np.zeros(d + 1), []
    loss = loss_of(beta)
    for step in range(NEWTON_STEPS):
        p = 0.5 * (1.0 + np.tanh(0.5 * (offset + design @ beta)))  # the sigmoid, without overflow
        gradient = design.T @ (p - y) / n + penalty * beta
        hessian = (design.T * (p * (1 - p))) @ design / n + np.diag(penalty)
        update = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6 and loss_of(beta - scale * update) > loss:
            scale /= 2
        beta = beta - scale * update
        loss = loss_of(beta)
        curve.append(loss)
        if progress is not None:
            progress(step + 1, NEWTON_STEPS, f"loss {loss:.4f}")
        if np.abs(scale * update).max() < NEWTON_TOLERANCE:
            break
    if progress is not None:
        progress(NEWTON_STEPS, NEWTON_STEPS, f"loss {loss:.4f}")
    return beta[:-1], float(beta[-1]), curve
