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

The model reads each example after a *reading context*: `config.context` demonstrations of the same
data, labeled by the model's own zero-shot reading (the most confident of each label in a sample,
alternating). A small base model reads the task from the format shown far better than from a bare
query (Gemma 3 270M on Amazon sentiment: 0.93 instead of 0.75), and the demonstrations' labels hardly
matter (docs/scalable.md); no gold is read. A context member is read with its own demonstration
left out. The context is part of the features: a trained head keeps it and reads new data after it.
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

    def prepare(self, examples: Sequence[Example], progress: TrainProgress | None = None,
                context: Sequence[tuple[str, int]] | None = None) -> Prepared:
        """Hidden states and prior of every example, read after `context` ((query, label) demonstrations;
        None: chosen from `examples` as the module docstring says; a trained head's own for new data)."""
        prompts = self.prompts(examples)
        context = self.choose_context(prompts, progress) if context is None else [(q, int(y)) for q, y in context]
        demos = tuple(part for query, label in context for part in (query, self.task.render_label(label)))
        member = {query: k for k, (query, _) in enumerate(context)}
        layer, features, prior = self.layer, [], []
        for start in range(0, len(prompts), PREPARE_BATCH):
            chunk = [_without(demos, member.get(p)) + (p,) for p in prompts[start:start + PREPARE_BATCH]]
            states, raw = self.backend.read_label_position(chunk, [layer], self.task.label_words)
            features.append(states[0])
            prior.append(raw[:, 1] - raw[:, 0])
            if progress is not None:
                progress(min(start + PREPARE_BATCH, len(prompts)), len(prompts), "reading hidden states")
        return Prepared(list(examples), prompts,
                        np.concatenate(features) if features else np.zeros((0, 0), np.float32),
                        np.concatenate(prior) if prior else np.zeros(0), {"layer": layer, "context": context})

    def choose_context(self, prompts: Sequence[str], progress: TrainProgress | None = None) -> list[tuple[str, int]]:
        """config.context demonstrations: from a fixed sample of the distinct queries, the most confident of
        each label under the model's zero-shot reading (centered over the sample), alternating labels,
        as many as leave room in the context window for the longest query."""
        distinct = list(dict.fromkeys(prompts))
        want = min(self.config.context, len(distinct) - 1)  # every example keeps other examples to read after
        if want <= 0:
            return []
        sample = [distinct[k] for k in sorted(np.random.default_rng(0).permutation(len(distinct))[:max(4 * want, 32)])]
        if progress is not None:
            progress(0, len(prompts), f"choosing {want} demonstrations to read after")
        # read_label_position, not label_logprobs: the label words' logits without projecting each prompt onto
        # the whole vocabulary (262k words for Gemma 3), which on a CPU costs more than the forward
        _, raw = self.backend.read_label_position([(q,) for q in sample], [0], self.task.label_words)
        log_odds = raw[:, 1] - raw[:, 0]
        log_odds = log_odds - log_odds.mean()
        sides = [sorted((k for k in range(len(sample)) if (log_odds[k] > 0) == bool(label)),
                        key=lambda k: -abs(log_odds[k])) for label in (0, 1)]
        chosen: list[tuple[str, int]] = []
        room = self.backend.context_window - max(self.backend.count_tokens(q) for q in prompts) - 8
        for k in range(want):
            label = k % 2 if sides[k % 2] else 1 - k % 2  # alternate; one side run out: the other
            if not sides[label]:
                break
            query = sample[sides[label].pop(0)]
            room -= self.backend.count_tokens(query) + self.backend.count_tokens(self.task.render_label(label))
            if room < 0:
                break
            chosen.append((query, label))
        return chosen

    def fit(self, prepared: Prepared, indices: Sequence[int], labels: Sequence[int],
            progress: TrainProgress | None = None, seed: int = 0) -> "TrainedHead":
        indices, labels = check_labels(indices, labels)
        # Standardized over every prepared input (labels play no part), so l2 means the same on any model.
        mean = prepared.features.mean(axis=0).astype(np.float64)
        scale = prepared.features.std(axis=0).astype(np.float64) + 1e-6
        x = (prepared.features[indices] - mean) / scale
        weights, bias, curve = fit_logistic(x, labels, prepared.prior[indices], self.config.l2, progress)
        return TrainedHead(weights, bias, mean, scale, prepared.extra["layer"], curve, prepared.extra.get("context", []))

    def zero_shot(self, prepared: Prepared) -> np.ndarray:
        return log_softmax_pair(prepared.prior)

    def load(self, folder: Path, meta: dict[str, Any]) -> "TrainedHead":
        saved = np.load(folder / "head.npz")
        described = json.loads((folder / "head.json").read_text()) if (folder / "head.json").is_file() else {}
        context = [(str(q), int(y)) for q, y in described.get("context", [])]  # older heads read the bare query
        return TrainedHead(saved["weights"], float(saved["bias"]), saved["mean"], saved["scale"],
                           int(saved["layer"]), list(meta.get("loss_curve", [])), context)


class TrainedHead(Trained):
    kind = "head"

    def __init__(self, weights: np.ndarray, bias: float, mean: np.ndarray, scale: np.ndarray, layer: int,
                 loss_curve: list[float], context: Sequence[tuple[str, int]] = ()) -> None:
        self.weights, self.bias, self.mean, self.scale = weights, bias, mean, scale
        self.layer, self.loss_curve = layer, loss_curve
        self.context = [(str(q), int(y)) for q, y in context]  # what it reads each example after

    def log_odds(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        if prepared.extra.get("layer") != self.layer:
            raise ValueError(f"this head reads block {self.layer}; the inputs were prepared at {prepared.extra.get('layer')}")
        if [tuple(c) for c in prepared.extra.get("context", [])] != [tuple(c) for c in self.context]:
            raise ValueError(f"this head reads each example after its own {len(self.context)} demonstrations; "
                             "prepare the inputs with them (prepare(examples, context=trained.context))")
        indices = np.asarray(indices, dtype=int)
        x = (prepared.features[indices] - self.mean) / self.scale
        return prepared.prior[indices] + x @ self.weights + self.bias

    def label_logprobs(self, prepared: Prepared, indices: Sequence[int]) -> np.ndarray:
        return log_softmax_pair(self.log_odds(prepared, indices))

    def save(self, folder: Path) -> None:
        np.savez(folder / "head.npz", weights=self.weights, bias=self.bias, mean=self.mean, scale=self.scale,
                 layer=self.layer)
        (folder / "head.json").write_text(json.dumps({"layer": self.layer, "dimensions": len(self.weights),
                                                      "context": [list(c) for c in self.context]}))


def _without(demos: tuple[str, ...], member: int | None) -> tuple[str, ...]:
    """The context's segments, less the demonstration of `member` (a context example read itself)."""
    return demos if member is None else demos[:2 * member] + demos[2 * member + 2:]


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
