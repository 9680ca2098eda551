"""CCS, contrast-consistent search (Burns et al. 2022, "Discovering latent knowledge in language
models without supervision"): a linear probe on hidden states, trained without labels.

Each example becomes a contrast pair: its query with the task's False word appended (x-) and with
its True word appended (x+), each as its own segment, tokenized as in a demonstration. The probe
reads the residual stream at the last token of each. Each side is normalized on its own (minus its
mean over the dataset, divided by its per-dimension standard deviation, as in the paper's code), so
what is left is not "which word was appended" but how the two completions differ per example. The
probe p(x) = sigmoid(w.h + b) minimizes, over the dataset,

    consistency (p(x+) - (1 - p(x-)))^2  +  confidence min(p(x+), p(x-))^2,

with the paper's settings: AdamW (lr 1e-3, weight decay 0.01), full batch, 1000 epochs, 10 random
restarts keeping the lowest loss, all seeded. An example's score is p(x+) averaged with 1 - p(x-);
its label is True when the score exceeds 1/2.

The loss is the same for w and -w: nothing in it says which direction is "True". As for a run's
polarity (trust.polarity_check), the sign is taken that agrees more with the model's calibrated
zero-shot labels; the agreement is kept as evidence.

Layer: by default the block at 2/3 of the depth (block 12 of Gemma 3 270M's 18). The ICM paper
(appendix E.2, figure 11) finds CCS accuracy varies strongly with the layer; probing work on
truth directions (Burns et al.'s layer sweeps, Marks & Tegmark 2023) finds them linearly readable
in middle-to-late layers, while the last blocks turn towards predicting the next token, which
for a contrast pair is mostly what the appended word already says. The default was chosen on
those grounds, not by scoring layers against gold (scripts/ccs_accuracy.py sweeps the layers
against gold, for evaluation only).

Gold labels are never read here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

from ..backends.base import HiddenStatesUnavailable, LanguageModel
from ..core.tasks import Example, Task

LAYER_FRACTION = 2 / 3  # default layer: this share of the model's blocks
RESTARTS = 10
EPOCHS = 1000
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
STATE_BATCH = 64  # contrast prompts per backend call (progress is logged between calls)
# Probes that end in different directions mean the loss does not pin the probe down: with fewer
# examples than dimensions (32 sentences against Gemma 3 270M's 640) a direction that is consistent
# and confident on every pair exists for almost any labeling, and which one training reaches is an
# accident of its start. So the probe is trained PROBE_SEEDS times from different seeds (each the
# best of RESTARTS restarts) and its stability is how much their labels agree, sign aside. Measured at
# block 12 of the bundled model over 5 seeds: 70% (32 sentiment sentences), 67% (64 sentences), 80%
# (32 TruthfulQA claims), 69% (96 claims), where 24 pairs of pure noise in 200 dimensions give ~60%
# and a planted direction ~100%; the 5 probes' accuracies on the 32 sentences were 0.34 to 0.88, and
# on 400 sentences 0.45 to 0.89 (agreeing on 70%). Below STABLE the probe is reported unstable and does not count as
# support for a run.
PROBE_SEEDS = 3
STABLE = 0.8

Log = Callable[[str], None]

__all__ = ["CCSResult", "HiddenStatesUnavailable", "ProbeFit", "ccs_labels", "contrast_states", "default_layer",
           "fit_ccs", "normalize_side", "resolve_sign", "seed_stability"]


@dataclass
class CCSResult:
    labels: np.ndarray  # 0/1 per example of the dataset, sign resolved
    p_true: np.ndarray  # per example, p(x+) averaged with 1 - p(x-), sign resolved
    layer: int  # block whose output was read (0: embeddings)
    n_layers: int  # blocks the model has
    loss: float  # the CCS loss of the kept probe (mean over examples)
    restarts: int
    flipped: bool  # whether the probe's own direction was reversed to agree with zero-shot
    zero_shot_agreement: float | None  # share of examples whose label equals the calibrated zero-shot one (after)
    stability: float = float("nan")  # mean agreement of probes trained from other seeds with this one, sign aside
    dimensions: int = 0  # of the hidden state

    @property
    def stable(self) -> bool:
        return bool(self.stability >= STABLE)

    def describe(self) -> str:
        sign = ("no zero-shot labels to orient it: the probe's own sign, which is arbitrary" if self.zero_shot_agreement is None
                else f"sign {'reversed' if self.flipped else 'kept'} to agree with the calibrated zero-shot labels "
                     f"({self.zero_shot_agreement:.0%} agreement)")
        stability = (f"probes from {PROBE_SEEDS} seeds agree on {self.stability:.0%} of labels (sign aside)"
                     if self.stable else
                     f"UNSTABLE: probes trained from {PROBE_SEEDS} seeds agree on only {self.stability:.0%} of labels "
                     f"(sign aside), so the direction kept is close to arbitrary ({len(self.labels)} examples for "
                     f"{self.dimensions} dimensions); it does not count as support")
        return (f"CCS probe on the last token's hidden state after block {self.layer} of {self.n_layers}, "
                f"best of {self.restarts} restarts (loss {self.loss:.4f}); {stability}; {sign}; "
                f"{self.labels.mean():.0%} True")


def default_layer(n_layers: int) -> int:
    """The block at LAYER_FRACTION of the depth (at least 1)."""
    return max(1, int(round(LAYER_FRACTION * n_layers)))


def contrast_states(backend: LanguageModel, task: Task, examples: Sequence[Example], layer: int | Sequence[int],
                    log: Log | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states of the contrast pairs: (x- [.., n, d], x+ [.., n, d]) with the False and the True
    word appended; a leading layer axis when `layer` is a sequence. Raises HiddenStatesUnavailable."""
    layers = [layer] if np.isscalar(layer) else list(layer)
    prompts = [(task.render_query(e), word) for e in examples for word in task.label_words]
    parts = []
    for start in range(0, len(prompts), STATE_BATCH):
        parts.append(backend.hidden_states(prompts[start:start + STATE_BATCH], layers))
        if progress is not None:  # progress(done, total, what), as in evaluation/baselines.py
            progress(min(start + STATE_BATCH, len(prompts)), len(prompts), "CCS hidden states")
        elif log is not None and len(prompts) > STATE_BATCH:
            log(f"  CCS hidden states: {min(start + STATE_BATCH, len(prompts))}/{len(prompts)} prompts")
    states = np.concatenate(parts, axis=1) if parts else np.zeros((len(layers), 0, 0), dtype=np.float32)
    negative, positive = states[:, 0::2], states[:, 1::2]
    return (negative[0], positive[0]) if np.isscalar(layer) else (negative, positive)


def normalize_side(states: np.ndarray) -> np.ndarray:
    """One side of the contrast pairs minus its mean over the dataset, divided by its per-dimension
    standard deviation (a dimension that never varies is left at 0)."""
    states = np.asarray(states, dtype=np.float64)
    centered = states - states.mean(axis=0, keepdims=True)
    spread = centered.std(axis=0, keepdims=True)
    return centered / np.where(spread > 0, spread, 1.0)


class ProbeFit(NamedTuple):
    scores: np.ndarray  # (p(x+) + 1 - p(x-)) / 2 per example, the kept probe's own sign
    loss: float
    stability: float  # mean over the other restarts of max(a, 1 - a), a: their labels' agreement with the kept one's


def fit_ccs(negative: np.ndarray, positive: np.ndarray, restarts: int = RESTARTS, epochs: int = EPOCHS,
            seed: int = 0) -> ProbeFit:
    """Train the probe on normalized contrast pairs [n, d] each.

    scores: (p(x+) + 1 - p(x-)) / 2 under the probe of lowest loss over `restarts` seeded starts;
    its sign is the probe's own (arbitrary: see resolve_sign). stability: how much the other
    restarts agree with it (1 with a single restart)."""
    import torch

    x_neg = torch.as_tensor(normalize_side(negative), dtype=torch.float32)
    x_pos = torch.as_tensor(normalize_side(positive), dtype=torch.float32)
    if x_neg.shape != x_pos.shape or x_neg.ndim != 2:
        raise ValueError(f"contrast pairs must be two [n, d] arrays of one shape, got {tuple(x_neg.shape)} "
                         f"and {tuple(x_pos.shape)}")
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + 15)
    tries, dim = max(1, restarts), x_neg.shape[1]
    # The restarts train side by side as the rows of one weight matrix: each row's loss depends on
    # its own parameters only and AdamW acts per element, so this is `tries` independent trainings.
    bound = 1 / np.sqrt(dim)  # nn.Linear's default initialization, drawn from our generator
    weight = ((torch.rand(tries, dim, generator=generator) * 2 - 1) * bound).requires_grad_()
    bias = ((torch.rand(tries, generator=generator) * 2 - 1) * bound).requires_grad_()
    optimizer = torch.optim.AdamW([weight, bias], lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p_neg, p_pos = torch.sigmoid(x_neg @ weight.T + bias), torch.sigmoid(x_pos @ weight.T + bias)  # [n, tries]
        consistency = (p_pos - (1 - p_neg)) ** 2
        confidence = torch.minimum(p_pos, p_neg) ** 2
        return (consistency + confidence).mean(dim=0), p_neg, p_pos

    for _ in range(epochs):
        optimizer.zero_grad()
        losses()[0].sum().backward()
        optimizer.step()
    with torch.no_grad():
        final, p_neg, p_pos = losses()
        kept = int(torch.argmin(final))
        every = (0.5 * (p_pos + 1 - p_neg)).double().numpy().T  # [tries, n]
    labels = every > 0.5
    others = [float(np.mean(labels[r] == labels[kept])) for r in range(tries) if r != kept]
    stability = float(np.mean([max(a, 1 - a) for a in others])) if others else 1.0
    return ProbeFit(every[kept], float(final[kept]), stability)


def seed_stability(scores: Sequence[np.ndarray]) -> float:
    """Mean over pairs of probes of the share of examples they label alike, sign aside (max(a, 1 - a));
    1 for a single probe."""
    labels = [np.asarray(s) > 0.5 for s in scores]
    pairs = [float(np.mean(a == b)) for k, a in enumerate(labels) for b in labels[k + 1:]]
    return float(np.mean([max(a, 1 - a) for a in pairs])) if pairs else 1.0


def resolve_sign(scores: np.ndarray, reference: Sequence[int] | None) -> tuple[np.ndarray, bool, float | None]:
    """Orient the probe: reverse its scores when its labels agree with `reference` (the calibrated
    zero-shot labels) on less than half the examples. Returns (scores, reversed, agreement after)."""
    scores = np.asarray(scores, dtype=float)
    if reference is None or not len(scores):
        return scores, False, None
    reference = np.asarray(reference, dtype=int)
    agreement = float(np.mean((scores > 0.5).astype(int) == reference))
    if agreement < 0.5:
        return 1 - scores, True, 1 - agreement
    return scores, False, agreement


def ccs_labels(backend: LanguageModel, task: Task, examples: Sequence[Example], zero_shot: Sequence[int] | None,
               layer: int | None = None, seed: int = 0, restarts: int = RESTARTS, epochs: int = EPOCHS,
               log: Log | None = None, progress=None) -> CCSResult:
    """The CCS baseline over a dataset: hidden states of the contrast pairs at `layer` (default:
    default_layer), the probe, its sign oriented by `zero_shot` labels. Raises HiddenStatesUnavailable
    where the backend has no hidden states."""
    n_layers = backend.hidden_layer_count
    layer = default_layer(n_layers) if layer is None else int(layer)
    if log is not None:
        log(f"CCS: hidden states of {2 * len(examples)} contrast prompts after block {layer} of {n_layers}")
    negative, positive = contrast_states(backend, task, examples, layer, log, progress)
    fits = [fit_ccs(negative, positive, restarts=restarts, epochs=epochs, seed=seed + k) for k in range(PROBE_SEEDS)]
    fit = fits[0]
    scores, flipped, agreement = resolve_sign(fit.scores, zero_shot)
    return CCSResult((scores > 0.5).astype(int), scores, layer, n_layers, fit.loss, max(1, restarts), flipped, agreement,
                     seed_stability([f.scores for f in fits]), int(negative.shape[1]) if negative.ndim == 2 else 0)
