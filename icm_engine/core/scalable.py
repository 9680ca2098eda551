"""Scalable ICM (paper appendix G, Algorithms 3 and 4) as a stepping object beside search.Search.

Mutual predictability is measured by fine-tuning instead of in context: the labeled set is split
into F folds (consistency groups kept whole) and each label is scored by a model fit on the other
folds, P(y_i | x_i, D minus D_f(i)). U(D) = alpha * P(D) - I(D) with the run's objective and
calibration over those cross-fitted log-probabilities, exactly as the in-context search sums its
leave-one-out terms (scoring.predictability), so the two algorithms' U read alike.

Steps:
- init (Algorithm 3, lines 1-2): every active example labeled by the learner's initial reading,
  calibrated (the model's zero-shot reading, or a model fit on a seed run's labels), then
  ConsistencyFix-MaxProb (Algorithm 4);
- step n (lines 4-10, one fold per step): at the start of a round the examples are partitioned
  anew; fold f is relabeled by a model fit on the other folds (calibrated argmax), then Algorithm 4
  within the fold; the proposal is accepted as in Algorithm 1, with probability
  min(1, exp(dU / T)) at the annealed temperature, dU measured by refitting every fold.

The learner is reached only through FoldLearner (runs/ wires in a learners/ implementation), so
this module trains nothing itself and never reads gold.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Protocol, Sequence

import numpy as np

from .config import SearchConfig
from .records import Flip, LabelState, SearchProgress, SearchSnapshot, StepRecord, UtilityParts
from .scoring import normalize, predictability, utility_parts
from .search import acceptance_probability, temperature
from .steering import Steering
from .tasks import ConsistencyIndex, Example, is_inconsistent


class FoldLearner(Protocol):
    """What the scalable search asks of a learner (learners/ implements it over prepared inputs)."""

    initial_source: str  # what labels every example at the start, in words (the init event's note)

    def initial(self) -> np.ndarray:
        """Raw label log-probs [n_examples, 2] that label every example at the start (Algorithm 3, line 1):
        the untrained model's reading, or a model fit on a seed labeling (the released code's iterative
        fine-tuning: a first batch labeled in context)."""

    def fit_predict(self, train: np.ndarray, labels: np.ndarray, test: np.ndarray) -> np.ndarray:
        """Fit on examples `train` labeled `labels`; raw label log-probs [len(test), 2] for `test`."""


class Fits:
    """Counts fits for the step records (the scalable search's "model calls")."""

    def __init__(self, learner: FoldLearner) -> None:
        self.learner, self.count = learner, 0

    def __call__(self, train, labels, test) -> np.ndarray:
        self.count += 1
        return self.learner.fit_predict(np.asarray(train, int), np.asarray(labels, int), np.asarray(test, int))


class ScalableSearch(Steering):
    """Algorithm 3 over `examples` with `learner`; the same surface as search.Search for the runner."""

    algorithm = "scalable"

    def __init__(self, learner: FoldLearner, examples: Sequence[Example], rule: str, config: SearchConfig,
                 snapshot: SearchSnapshot | None = None) -> None:
        self.fits = Fits(learner)
        self.examples, self.config = list(examples), config
        self.n_examples = len(self.examples)
        self.consistency = ConsistencyIndex(rule if config.use_consistency else "none", self.examples)
        self.folds: list[np.ndarray] = []
        self._cross: dict[int, np.ndarray] | None = None  # cross-fitted raw log-probs of the current D
        if snapshot is None:
            self.iteration, self.labels, self.excluded, self.next_position = -1, {}, set(), 0
            self.alpha, self.t0 = config.alpha, config.t0
            self.rng = np.random.default_rng(config.seed)
            self.progress = SearchProgress()
        else:
            self.iteration = snapshot.iteration
            self.labels = {i: replace(state) for i, state in snapshot.labels.items()}
            self.excluded = set(snapshot.excluded)
            self.next_position = snapshot.next_position
            self.alpha, self.t0 = snapshot.alpha, snapshot.t0
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = snapshot.rng_state
            self.progress = replace(snapshot.progress)
            # Each round's partition comes from its own generator, seeded by the run's seed and the
            # round: a search resumed mid-round draws the very same folds again.
            if self.iteration > 0 and (self.iteration % self.config.folds) != 0:
                self.folds = self._partition(np.random.default_rng(self._round_seed(self._round(self.iteration))))

    # state views, as search.Search offers them (initialized, active, unlabeled, label_map: Steering)
    @property
    def labeled_by_search(self) -> int:
        return len(self.labels)

    @property
    def stopped(self) -> bool:
        """A whole round (F folds) without an accepted change, or the step cap."""
        if not self.initialized:
            return False
        if self.progress.extended_until is not None and self.iteration < self.progress.extended_until:
            return False
        if self.iteration >= self.config.steps:
            return True
        return self.config.stop == "labeled" and self.iteration - self.progress.last_change >= self._quiet_steps()

    @property
    def done(self) -> bool:
        return self.stopped and not self.unlabeled()

    def _quiet_steps(self) -> int:
        """Steps without an accepted change that end a stop="labeled" run: whole rounds of F folds."""
        return max(1, math.ceil(self.config.patience_sweeps)) * self.config.folds

    def snapshot(self) -> SearchSnapshot:
        parts = self._utility_parts(self.label_map()) if self._cross is not None else None
        return SearchSnapshot(
            iteration=self.iteration, labels={i: replace(s) for i, s in self.labels.items()},
            excluded=set(self.excluded), rng_state=self.rng.bit_generator.state,
            next_position=self.next_position, alpha=self.alpha, t0=self.t0,
            u=None if parts is None else parts.u, ap=None if parts is None else parts.alpha_p,
            inconsistencies=None if parts is None else parts.i, progress=replace(self.progress))

    # folds ---------------------------------------------------------------------------------
    def _round(self, iteration: int) -> int:
        return (iteration - 1) // self.config.folds

    def _round_seed(self, round_number: int) -> list[int]:
        return [self.config.seed, 7, round_number]

    def _partition(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Active examples in F folds, each consistency group whole (Algorithm 3, line 4)."""
        units: dict[object, list[int]] = {}
        for i in self.active():
            group = self.examples[i].group if self.consistency.rule != "none" else None
            units.setdefault(("g", group) if group is not None else ("i", i), []).append(i)
        blocks = list(units.values())
        order = rng.permutation(len(blocks))
        folds: list[list[int]] = [[] for _ in range(self.config.folds)]
        for rank, b in enumerate(order):
            folds[rank % self.config.folds].extend(blocks[b])
        return [np.asarray(sorted(f), dtype=int) for f in folds if f]

    def _cross_fit(self, labels: dict[int, int]) -> dict[int, np.ndarray]:
        """Each labeled example's raw log-probs from a model fit on the other folds."""
        raw: dict[int, np.ndarray] = {}
        for fold in self.folds:
            held = set(fold.tolist())
            test = np.asarray([i for i in fold if i in labels], dtype=int)
            train = np.asarray(sorted(i for i in labels if i not in held), dtype=int)
            if not len(test):
                continue
            if not len(train):
                raise ValueError("scalable ICM needs at least two folds with labeled examples")
            for i, row in zip(test, self.fits(train, [labels[j] for j in train], test)):
                raw[int(i)] = np.asarray(row, dtype=np.float64)
        return raw

    def _utility_parts(self, labels: dict[int, int], raw: dict[int, np.ndarray] | None = None) -> UtilityParts:
        """U(D) with P from cross-fitted log-probs (`raw`, by default the current folds' ones)."""
        raw = self._cross if raw is None else raw
        targets = sorted(raw)
        logp = normalize(np.stack([raw[t] for t in targets]), self.config.calibration) if targets else np.zeros((0, 2))
        p_of_d = predictability(logp, [labels[t] for t in targets], self.config.objective)
        return utility_parts(self.alpha, p_of_d, len(self.consistency.inconsistent_pairs(labels)))

    # Algorithm 4 -------------------------------------------------------------------------
    def _fix_max_prob(self, proposed: dict[int, int], confidence: dict[int, float]) -> tuple[dict[int, int], list[int]]:
        """Within each consistency group, the most confident prediction stands and the others are made
        consistent with it (each keeps its own label where that is consistent); returns (labels, fixed)."""
        labels, fixed = dict(proposed), []
        if self.consistency.rule == "none":
            return labels, fixed
        for members in self.consistency.groups.values():
            inside = sorted((m for m in members if m in labels), key=lambda m: -confidence.get(m, 0.0))
            settled: list[int] = []
            for m in inside:
                for candidate in (labels[m], 1 - labels[m]):
                    if not any(is_inconsistent(self.consistency.rule, self.examples[m], candidate,
                                               self.examples[s], labels[s]) for s in settled):
                        if candidate != labels[m] and not self.labels.get(m, LabelState(0, 0)).pinned:
                            labels[m] = candidate
                            fixed.append(m)
                        break
                settled.append(m)
        return labels, fixed

    def _decide(self, raw: np.ndarray, center: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated argmax and its confidence (probability of the chosen label)."""
        logp = normalize(raw, self.config.calibration, center)
        return logp.argmax(axis=1), np.exp(logp.max(axis=1))

    # the search --------------------------------------------------------------------------
    def initialize(self) -> StepRecord:
        if self.initialized:
            raise RuntimeError("search already initialized")
        started, fits = time.perf_counter(), self.fits.count
        pool = self.active()
        if not pool:
            raise ValueError("no examples to label")
        raw = np.asarray(self.fits.learner.initial(), dtype=np.float64)[pool]
        chosen, confidence = self._decide(raw, None)
        proposed = {i: int(y) for i, y in zip(pool, chosen)}
        labels, fixed = self._fix_max_prob(proposed, dict(zip(pool, confidence.tolist())))
        self.labels = {i: LabelState(label=y, position=p) for p, (i, y) in enumerate(sorted(labels.items()))}
        self.next_position = len(self.labels)
        flips = [Flip(i, None, proposed[i], "initial") for i in sorted(proposed)]
        flips += [Flip(i, proposed[i], labels[i], "fix") for i in fixed]
        self.iteration = 0
        self.folds = self._partition(np.random.default_rng(self._round_seed(0)))
        self._cross = self._cross_fit(labels)
        self._store_logp()
        self.progress.labeled_at = 0
        record = StepRecord(iteration=0, kind="init", accepted=True, flips=flips,
                            note=f"labeled {len(labels)} by {self.fits.learner.initial_source} ({self.config.calibration}); "
                                 f"{len(fixed)} fixed by Algorithm 4; {len(self.folds)} folds")
        record.score_after(self._utility_parts(labels))
        return self._record(record, started, fits)

    def step(self) -> StepRecord:
        if not self.initialized:
            return self.initialize()
        if self.stopped and self.unlabeled():
            return self.final_pass()
        started, fits = time.perf_counter(), self.fits.count
        n = self.iteration + 1
        round_number, fold_number = self._round(n), (n - 1) % self.config.folds
        if fold_number == 0:  # a new round: a new partition (line 4), and U(D) under it
            self.folds = self._partition(np.random.default_rng(self._round_seed(round_number)))
            self._cross = None
        if self._cross is None:
            self._cross = self._cross_fit(self.label_map())
            self._store_logp()
        labels_now = self.label_map()
        before = self._utility_parts(labels_now)
        temp = temperature(n, self.t0, self.config.t_min, self.config.beta)
        record = StepRecord(iteration=n, kind="fold", temperature=temp)
        record.score_before(before)
        fold = [int(i) for i in self.folds[fold_number % len(self.folds)] if int(i) in self.labels]
        movable = [i for i in fold if not self.labels[i].pinned]
        held = set(fold)
        train = sorted(i for i in self.labels if i not in held)
        if not movable or not train:
            self.iteration = n
            record.accepted, record.delta, record.note = True, 0.0, f"round {round_number + 1}, fold {fold_number + 1}: nothing to relabel"
            return self._record(record, started, fits)
        raw = self.fits(train, [labels_now[j] for j in train], movable)
        center = np.mean(np.stack(list(self._cross.values())), axis=0)
        chosen, confidence = self._decide(raw, center)
        proposed = dict(labels_now)
        proposed.update({i: int(y) for i, y in zip(movable, chosen)})
        confidences = dict(zip(movable, confidence.tolist()))
        proposed, fixed = self._fix_max_prob(proposed, confidences)
        changed = [i for i in fold if proposed[i] != labels_now[i]]
        if not changed:
            record.score_after(before)
            record.delta, record.accept_prob, record.accepted = 0.0, 1.0, True
            record.note = f"round {round_number + 1}, fold {fold_number + 1} of {len(self.folds)}: fit on {len(train)}, " \
                          f"relabeled {len(movable)}, none changed"
            self.iteration = n
            return self._record(record, started, fits)
        cross = self._cross_fit(proposed)
        record.score_change(self._utility_parts(proposed, cross))
        record.accept_prob = acceptance_probability(record.delta, temp)
        record.draw = float(self.rng.random())
        record.accepted = record.delta > 0 or record.draw < record.accept_prob
        record.note = (f"round {round_number + 1}, fold {fold_number + 1} of {len(self.folds)}: fit on {len(train)}, "
                       f"relabeled {len(movable)}, {len(changed)} changed ({len(fixed)} by Algorithm 4)")
        if record.accepted:
            fixed_set = set(fixed)
            record.flips = [Flip(i, labels_now[i], proposed[i], "fix" if i in fixed_set else "fold") for i in changed]
            for i in changed:
                self.labels[i].label = proposed[i]
            self._cross = cross
            self._store_logp()
            self.progress.accepted_changes += 1
            self.progress.last_change = n
        self.iteration = n
        return self._record(record, started, fits)

    def final_pass(self) -> StepRecord:
        """Label what is left (examples a person included again): a model fit on every label (Algorithm 3,
        line 11) predicts them, calibrated argmax, then Algorithm 4 over their groups."""
        if not self.initialized:
            raise RuntimeError("the search has not started: nothing to finish")
        started, fits = time.perf_counter(), self.fits.count
        todo = self.unlabeled()
        record = StepRecord(iteration=self.iteration, kind="final_pass", accepted=True)
        if not todo:
            record.note = "every active example is labeled"
            return self._record(record, started, fits)
        labels_now = self.label_map()
        train = sorted(labels_now)
        raw = self.fits(train, [labels_now[j] for j in train], todo)
        center = np.mean(np.stack(list(self._cross.values())), axis=0) if self._cross else None
        chosen, confidence = self._decide(raw, center)
        proposed = {**labels_now, **{i: int(y) for i, y in zip(todo, chosen)}}
        proposed, fixed = self._fix_max_prob(proposed, dict(zip(todo, confidence.tolist())))
        record.flips = [Flip(i, None, proposed[i], "final_pass") for i in todo]
        record.flips += [Flip(i, labels_now[i], proposed[i], "fix") for i in fixed if i in labels_now]
        for i in todo:
            self.labels[i] = LabelState(label=proposed[i], position=self.next_position)
            self.next_position += 1
        for i in fixed:
            self.labels[i].label = proposed[i]
        self._invalidate_scores()
        self.progress.last_change = self.iteration
        record.note = f"labeled {len(todo)} examples by a model fit on all {len(train)} labels"
        return self._record(record, started, fits)

    def _invalidate_scores(self) -> None:
        self._cross = None  # cross-fitted again at the next step
        for state in self.labels.values():
            state.logp = None

    def _store_logp(self) -> None:
        for i, state in self.labels.items():
            row = self._cross.get(i) if self._cross else None
            state.logp = None if row is None else (float(row[0]), float(row[1]))

    def _record(self, record: StepRecord, started: float, fits: int) -> StepRecord:
        record.model_calls = self.fits.count - fits
        record.seconds = time.perf_counter() - started
        record.labeled_count = len(self.labels)
        return record
