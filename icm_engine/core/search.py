"""The ICM search (paper Algorithm 1, with ConsistencyFix, Algorithm 2) as a stepping object.

`Search.step()` runs one iteration and returns a StepRecord describing it; `snapshot()` holds
everything needed to continue exactly there (labels, demonstration order, RNG state). The
object never reads gold labels: it is only ever given the examples' inputs.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Iterable, Sequence

import numpy as np

from .config import SearchConfig
from .records import Fix, Flip, LabelState, SearchProgress, SearchSnapshot, StepRecord
from .scoring import Evaluation, Scorer, normalize
from .steering import Steering
from .tasks import consistent_options

ACCEPTED_CLOCK_DECAY = 2.0  # the released code's T = T0 / (1 + 2 log(1 + accepted flips))


def temperature(iteration: int, t0: float, t_min: float, beta: float) -> float:
    """T = max(T_min, T_0 / (1 + beta * log n)), n counted from 1 (Algorithm 1, line 4)."""
    return max(t_min, t0 / (1.0 + beta * math.log(max(iteration, 1))))


def accepted_clock_temperature(accepted: int, t0: float, t_min: float) -> float:
    """T = max(T_min, T_0 / (1 + 2 log(1 + a))), a = accepted changes so far (the released code)."""
    return max(t_min, t0 / (1.0 + ACCEPTED_CLOCK_DECAY * math.log1p(max(accepted, 0))))


def acceptance_probability(delta: float, temp: float) -> float:
    """min(1, exp(delta / T)), without overflow for large positive or negative delta."""
    if delta >= 0:
        return 1.0
    return math.exp(max(delta / temp, -745.0))


class Search(Steering):
    """One ICM run over `examples`, scored by `scorer`; see the module docstring."""

    def __init__(self, scorer: Scorer, config: SearchConfig, snapshot: SearchSnapshot | None = None,
                 excluded: Iterable[int] = ()) -> None:
        """`excluded`: examples out of the search from the start (a batch run's non-members); a
        snapshot carries its own."""
        self.scorer = scorer
        self.config = config
        self.n_examples = len(scorer.examples)
        self._current: Evaluation | None = None
        if snapshot is None:
            self.iteration = -1  # -1: not initialized; 0 after initialization
            self.labels: dict[int, LabelState] = {}
            self.excluded: set[int] = set(excluded)
            self.next_position = 0
            self.alpha = config.alpha
            self.t0 = config.t0
            self.rng = np.random.default_rng(config.seed)
            self.progress = SearchProgress()
        else:
            self.iteration = snapshot.iteration
            self.labels = {i: replace(state) for i, state in snapshot.labels.items()}
            self.excluded = set(snapshot.excluded)
            self.next_position = snapshot.next_position
            self.alpha = snapshot.alpha
            self.t0 = snapshot.t0
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = snapshot.rng_state
            self.progress = replace(snapshot.progress)
            self._current = self._restore_evaluation(snapshot)

    # state views (initialized, active, unlabeled, label_map: Steering) ---------------------
    @property
    def labeled_by_search(self) -> int:
        """Examples the search itself had labeled: counted when the final pass ran, or now if it has not."""
        return len(self.labels) if self.progress.search_labeled is None else self.progress.search_labeled

    @property
    def stopped(self) -> bool:
        """The search's own stopping rule holds (config.stop); a final pass may still be due."""
        if not self.initialized:
            return False
        if self.progress.extended_until is not None and self.iteration < self.progress.extended_until:
            return False
        if self.iteration >= self.config.steps:
            return True
        if self.config.stop == "labeled" and not self.unlabeled():
            return self.iteration - self.progress.last_change >= self._quiet_steps()
        return False

    def _quiet_steps(self) -> int:
        """Steps without an accepted change that end a stop="labeled" search: patience_sweeps sweeps."""
        return math.ceil(self.config.patience_sweeps * len(self.active()))

    @property
    def done(self) -> bool:
        """Stopped, and nothing left for the final pass (when it is on) to label."""
        return self.stopped and not (self.config.final_pass and self.unlabeled())

    def temperature_now(self, iteration: int) -> float:
        if self.config.clock == "accepted":
            return accepted_clock_temperature(self.progress.accepted_changes, self.t0, self.config.t_min)
        return temperature(iteration, self.t0, self.config.t_min, self.config.beta)

    def order(self, labels: dict[int, LabelState] | None = None) -> list[int]:
        labels = self.labels if labels is None else labels
        return sorted(labels, key=lambda i: labels[i].position)

    def snapshot(self) -> SearchSnapshot:
        parts = None if self._current is None else self._current.parts(self.alpha)
        return SearchSnapshot(
            iteration=self.iteration,
            labels={i: replace(state) for i, state in self.labels.items()},
            excluded=set(self.excluded),
            rng_state=self.rng.bit_generator.state,
            next_position=self.next_position,
            alpha=self.alpha,
            t0=self.t0,
            u=None if parts is None else parts.u,
            ap=None if parts is None else parts.alpha_p,
            inconsistencies=None if parts is None else parts.i,
            progress=replace(self.progress),
        )

    def _restore_evaluation(self, snapshot: SearchSnapshot) -> Evaluation | None:
        # Reuse the scores stored with the snapshot, summed in the same order as before, so a
        # resumed run decides exactly as an uninterrupted one would, without re-running the model.
        if snapshot.ap is None or any(state.logp is None for state in self.labels.values()):
            return None
        raw = {i: np.asarray(self.labels[i].logp, dtype=np.float64) for i in self.order()}
        return self.scorer.score_raw(raw, self.label_map())

    # scoring helpers --------------------------------------------------------------------
    def _evaluate(self, labels: dict[int, LabelState]) -> Evaluation:
        return self.scorer.evaluate(self.order(labels), self.label_map(labels))

    def _current_evaluation(self) -> Evaluation:
        if self._current is None:
            self._current = self._evaluate(self.labels)
            self._store_scores(self.labels, self._current)
        return self._current

    @staticmethod
    def _store_scores(labels: dict[int, LabelState], evaluation: Evaluation) -> None:
        for i, state in labels.items():
            if i in evaluation.raw:
                state.logp = (float(evaluation.raw[i][0]), float(evaluation.raw[i][1]))

    # Algorithm 2 --------------------------------------------------------------------------
    def _consistency_fix(
        self, labels: dict[int, LabelState], evaluation: Evaluation, only: set[int] | None = None
    ) -> tuple[dict[int, LabelState], Evaluation, list[Fix]]:
        """Algorithm 2; `only`: consider just the pairs with a member in it (the final pass's examples)."""
        fixes: list[Fix] = []
        if not self.config.use_consistency:
            return labels, evaluation, fixes
        tried: set[tuple[int, int]] = set()
        for _ in range(self.config.max_fix_iters):
            pairs = [p for p in self.scorer.consistency.inconsistent_pairs(self.label_map(labels))
                     if p not in tried and (only is None or p[0] in only or p[1] in only)]
            if not pairs:
                break
            a, b = pairs[int(self.rng.integers(len(pairs)))]
            tried.add((a, b))
            options = [
                (ya, yb)
                for ya, yb in consistent_options(self.scorer.consistency.rule, self.scorer.examples[a], self.scorer.examples[b])
                if not (labels[a].pinned and ya != labels[a].label) and not (labels[b].pinned and yb != labels[b].label)
            ]
            if not options:
                continue
            candidates = []
            for ya, yb in options:
                option = {i: replace(state) for i, state in labels.items()}
                option[a].label, option[b].label = ya, yb
                candidates.append(option)
            evaluations = self.scorer.evaluate_many([(self.order(c), self.label_map(c)) for c in candidates])
            utilities = [e.utility(self.alpha) for e in evaluations]
            best = int(np.argmax(utilities))
            u_now = evaluation.utility(self.alpha)
            applied = utilities[best] >= u_now
            fixes.append(
                Fix((a, b), (labels[a].label, labels[b].label), options[best], applied, u_now, utilities[best])
            )
            if applied:
                labels, evaluation = candidates[best], evaluations[best]
                tried.clear()  # labels changed, so earlier verdicts on other pairs may differ now
        return labels, evaluation, fixes

    # the search ---------------------------------------------------------------------------
    def initialize(self) -> StepRecord:
        """Algorithm 1, lines 1-2: K random examples with random labels, then ConsistencyFix."""
        if self.initialized:
            raise RuntimeError("search already initialized")
        started, calls = time.perf_counter(), self._backend_stats()
        pool = [i for i in range(self.n_examples) if i not in self.excluded]
        if not pool:
            raise ValueError("no examples to label")
        chosen = self.rng.choice(pool, size=min(self.config.k_init, len(pool)), replace=False)
        if self.config.balanced_init:  # half of each label, in a random order (the released code's seed set)
            initial = self.rng.permutation([k % 2 for k in range(len(chosen))]).tolist()
        else:
            initial = [int(self.rng.integers(2)) for _ in chosen]
        labels = {int(i): LabelState(label=int(y), position=p) for p, (i, y) in enumerate(zip(chosen, initial))}
        self.next_position = len(labels)
        evaluation = self._evaluate(labels)
        initial = evaluation.parts(self.alpha)
        initial_labels = self.label_map(labels)
        labels, evaluation, fixes = self._consistency_fix(labels, evaluation)
        self._store_scores(labels, evaluation)
        flips = [Flip(i, None, y, "initial") for i, y in initial_labels.items()]
        flips += self._fix_flips(initial_labels, labels, fixes)
        self.labels, self._current, self.iteration = labels, evaluation, 0
        self._note_labeled()
        record = StepRecord(iteration=0, kind="init", fixes=fixes, accepted=True, flips=flips)
        record.score_before(initial)
        return self._record(record, started, calls)

    def _sampling_weights(self, candidates: Sequence[int]) -> np.ndarray:
        weights = np.ones(len(candidates))
        if not self.config.use_consistency or self.scorer.consistency.rule == "none":
            return weights
        for k, i in enumerate(candidates):
            if i not in self.labels and any(p in self.labels for p in self.scorer.consistency.partners(i)):
                weights[k] = self.config.group_weight
        return weights

    def step(self) -> StepRecord:
        """Algorithm 1, lines 4-16, once: pick an example, propose the label the model finds most
        likely, score D with it (after ConsistencyFix), accept or reject, record what happened."""
        if not self.initialized:
            return self.initialize()
        if self.stopped and self.config.final_pass and self.unlabeled():
            return self.final_pass()
        started, calls = time.perf_counter(), self._backend_stats()
        n = self.iteration + 1
        record = StepRecord(iteration=n, kind="propose", temperature=self.temperature_now(n))
        current = self._current_evaluation()
        self.scorer.hold(self.order(), self.label_map())  # what this step's prompts start with
        before = current.parts(self.alpha)
        record.score_before(before)
        example = self._pick_example()
        if example is None:
            record.note = "nothing left to propose: every example is pinned or excluded"
            return self._finish(record, started, calls)
        self._propose(record, example, current)
        if record.proposed_label == record.old_label:
            # D unchanged: U(D-hat) = U(D), delta 0, accepted without asking the model again.
            record.score_after(before)
            record.delta, record.accept_prob, record.accepted = 0.0, 1.0, True
            record.note = "proposal equals current label"
            return self._finish(record, started, calls)
        labels, evaluation, before_fix = self._score_proposal(record)
        if self._metropolis_accepts(record):
            self._accept(record, labels, evaluation, before_fix)
        self.iteration = n
        self._note_labeled()
        return self._record(record, started, calls)

    def _pick_example(self) -> int | None:
        """Algorithm 1, line 5: one example at random among those a proposal may change (neither
        pinned nor excluded), unlabeled partners of labeled examples weighted up (_sampling_weights);
        None when there is none. Draws from the RNG once."""
        candidates = [i for i in range(self.n_examples) if i not in self.excluded and not self._pinned(i)]
        if not candidates:
            return None
        weights = self._sampling_weights(candidates)
        return candidates[int(self.rng.choice(len(candidates), p=weights / weights.sum()))]

    def _propose(self, record: StepRecord, example: int, current: Evaluation) -> None:
        """Algorithm 1, line 6: the label argmax P(y | x, D minus x), calibrated as the run is;
        fills the record's example, old and proposed labels, and the log-probs that chose."""
        if example in current.raw and self.scorer.mode != "prequential":
            # A labeled example's prompt (D minus it, then its query) is the one its term of U was
            # scored with: the same numbers, without asking the model again.
            raw = current.raw[example]
        else:
            raw = self.scorer.predict(self.order(), self.label_map(), example)
        logp = normalize(raw, self.scorer.calibration, current.center())[0]
        record.example = example
        record.old_label = self.labels[example].label if example in self.labels else None
        record.proposed_label = int(np.argmax(logp))
        record.proposal_logp = (float(logp[0]), float(logp[1]))

    def _score_proposal(self, record: StepRecord) -> tuple[dict[int, LabelState], Evaluation, dict[int, int]]:
        """Algorithm 1, lines 7-8: D-hat = D with the proposal (a new example goes last in the
        demonstration order), made consistent by ConsistencyFix, then scored; fills the record's
        fixes, U after and delta. Returns D-hat, its evaluation, and its labels before the fixes
        (what the fix flips are measured from)."""
        labels = {i: replace(state) for i, state in self.labels.items()}
        if record.example in labels:
            labels[record.example].label = record.proposed_label
        else:
            labels[record.example] = LabelState(label=record.proposed_label, position=self.next_position)
        evaluation = self._evaluate(labels)
        before_fix = self.label_map(labels)
        labels, evaluation, record.fixes = self._consistency_fix(labels, evaluation)
        record.score_change(evaluation.parts(self.alpha))
        return labels, evaluation, before_fix

    def _metropolis_accepts(self, record: StepRecord) -> bool:
        """Algorithm 1, lines 9-14: accept when U rose, else with probability exp(delta / T). The
        uniform draw is taken even when U rose, so every scored proposal uses the RNG alike and a
        replay draws the same numbers; the draw is recorded so the decision can be checked."""
        record.accept_prob = acceptance_probability(record.delta, record.temperature)
        record.draw = float(self.rng.random())
        record.accepted = record.delta > 0 or record.draw < record.accept_prob
        return record.accepted

    def _accept(self, record: StepRecord, labels: dict[int, LabelState], evaluation: Evaluation,
                before_fix: dict[int, int]) -> None:
        """D <- D-hat, recording its flips; the accepted clock and the stopping rule count only an
        acceptance that changed a label (ConsistencyFix may have undone the proposal itself)."""
        if record.example not in self.labels:
            self.next_position += 1
        flips = [Flip(record.example, record.old_label, record.proposed_label, "proposal")]
        flips += self._fix_flips(before_fix, labels, record.fixes)
        record.flips = [f for f in flips if f.cause != "fix" or f.old != f.new]
        self._store_scores(labels, evaluation)
        if self.label_map(labels) != self.label_map():
            self.progress.accepted_changes += 1
            self.progress.last_change = record.iteration
        self.labels, self._current = labels, evaluation

    def _finish(self, record: StepRecord, started: float, calls) -> StepRecord:
        """A step that left D as it was: count the iteration and record it (labeled_at is left to a
        step that changes D, as in every stored run)."""
        self.iteration = record.iteration
        return self._record(record, started, calls)

    def _note_labeled(self) -> None:
        if self.progress.labeled_at is None and not self.unlabeled():
            self.progress.labeled_at = self.iteration

    # the final pass -----------------------------------------------------------------------
    def final_pass(self) -> StepRecord:
        """Label every active example the search left: argmax P(y | x, D) with the final D as
        demonstrations, under the run's calibration; then ConsistencyFix over the pairs those
        examples are in, choosing by U. Recorded as one event of kind "final_pass"."""
        if not self.initialized:
            raise RuntimeError("the search has not started: nothing to finish")
        started, calls = time.perf_counter(), self._backend_stats()
        todo = self.unlabeled()
        record = StepRecord(iteration=self.iteration, kind="final_pass", accepted=True)
        if self.progress.search_labeled is None:
            self.progress.search_labeled = len(self.labels)
        if not todo:
            record.note = "nothing left to label"
            return self._record(record, started, calls)
        current = self._current_evaluation()
        record.score_before(current.parts(self.alpha))
        raw = self.scorer.predict_many(self.order(), self.label_map(), todo)
        logp = normalize(raw, self.scorer.calibration, current.center())
        labels = {i: replace(state) for i, state in self.labels.items()}
        position = self.next_position
        for k, i in enumerate(todo):
            labels[i] = LabelState(label=int(np.argmax(logp[k])), position=position)
            position += 1
        evaluation = self._evaluate(labels)
        before_fix = self.label_map(labels)
        labels, evaluation, record.fixes = self._consistency_fix(labels, evaluation, only=set(todo))
        record.score_change(evaluation.parts(self.alpha))
        record.flips = [Flip(i, None, labels[i].label, "final_pass") for i in todo]
        record.flips += [f for f in self._fix_flips(before_fix, labels, record.fixes) if f.example not in set(todo)]
        record.note = f"labeled {len(todo)} examples the search left, given the final D of {len(self.labels)}"
        self._store_scores(labels, evaluation)
        self.labels, self._current, self.next_position = labels, evaluation, position
        self.progress.last_change = self.iteration
        return self._record(record, started, calls)

    def _fix_flips(self, before: dict[int, int], labels: dict[int, LabelState], fixes: list[Fix]) -> list[Flip]:
        partner = {}
        for fix in fixes:
            if fix.applied:
                partner[fix.pair[0]], partner[fix.pair[1]] = fix.pair[1], fix.pair[0]
        return [
            Flip(i, before[i], labels[i].label, "fix", partner.get(i))
            for i in sorted(before)
            if before[i] != labels[i].label
        ]

    def _invalidate_scores(self) -> None:
        self._current = None  # scored lazily at the next step, so steering answers at once
        for state in self.labels.values():
            state.logp = None

    # bookkeeping ---------------------------------------------------------------------------
    def _backend_stats(self):
        return self.scorer.backend.stats.snapshot()

    def _record(self, record: StepRecord, started: float, calls) -> StepRecord:
        used = self.scorer.backend.stats.since(calls)
        record.model_calls, record.tokens_forwarded = used.model_calls, used.tokens_forwarded
        record.tokens_reused = used.tokens_reused
        record.seconds = time.perf_counter() - started
        record.labeled_count = len(self.labels)
        if record.u_after is None and self._current is not None and record.kind == "init":
            record.score_after(self._current.parts(self.alpha))
        return record
