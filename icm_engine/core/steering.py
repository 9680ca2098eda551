"""What the in-context search (search.Search) and the scalable one (scalable.ScalableSearch) share:
their state views and a person's actions on them (pin, unpin, exclude, include, alpha and T0, more
steps).

Each action changes the search's state and returns a StepRecord that the runner stores as an event;
a change of alpha, T0 or the step budget lists each parameter's old and new value in the record's
params (ParamChange), which the store keeps as rows and replay redoes. A search that mixes this in
has labels, excluded, next_position, alpha, t0, config, iteration and progress, and says in
_invalidate_scores what it must rescore after a change of D and in _quiet_steps how many steps
without an accepted change end its stop="labeled" rule.
"""
from __future__ import annotations

from dataclasses import replace

from .records import Flip, LabelState, ParamChange, StepRecord


class Steering:
    # state views both searches share ------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return self.iteration >= 0

    def active(self) -> list[int]:
        """Examples the search may label: all but the excluded ones."""
        return [i for i in range(self.n_examples) if i not in self.excluded]

    def unlabeled(self) -> list[int]:
        return [i for i in self.active() if i not in self.labels]

    def label_map(self, labels: dict[int, LabelState] | None = None) -> dict[int, int]:
        labels = self.labels if labels is None else labels
        return {i: state.label for i, state in labels.items()}

    def stop_progress(self) -> tuple[str, int, int]:
        """(phase, done, total) toward the search's own stop, for progress bars: ("labeled", labeled,
        active) while stop="labeled" has examples to label, then ("quiet steps", steps since the last
        accepted change, _quiet_steps()), which falls back when a change is accepted; ("steps",
        iteration, cap) under stop="steps" or once extended. The cap (config.steps) can end either
        phase sooner."""
        if self.config.stop == "labeled" and self.progress.extended_until is None:
            if self.unlabeled():
                return "labeled", len(self.labels), len(self.active())
            window = self._quiet_steps()
            quiet = max(self.iteration, 0) - self.progress.last_change
            return "quiet steps", (window if self.done else min(quiet, window)), window
        cap = max(self.config.steps, self.progress.extended_until or 0)
        return "steps", (cap if self.done else max(self.iteration, 0)), cap

    # a person's actions -------------------------------------------------------------------
    def _pinned(self, example: int) -> bool:
        return example in self.labels and self.labels[example].pinned

    def pin(self, example: int, label: int) -> StepRecord:
        """A person's override: set the label and forbid the search to change it."""
        if example in self.excluded:
            raise ValueError(f"example {example} is excluded; include it before pinning")
        old = self.labels[example].label if example in self.labels else None
        if example in self.labels:
            self.labels[example].label, self.labels[example].pinned = int(label), True
        else:
            self.labels[example] = LabelState(label=int(label), position=self.next_position, pinned=True)
            self.next_position += 1
        flips = [Flip(example, old, int(label), "human")] if old != label else []
        return self._steer("pin", example, old, int(label), flips, dirty=old != label)

    def unpin(self, example: int) -> StepRecord:
        if example in self.labels:
            self.labels[example].pinned = False
        return self._steer("unpin", example, None, None, [], dirty=False)

    def exclude(self, example: int) -> StepRecord:
        """Take an example out of the search: it is unlabeled and never proposed again."""
        old = self.labels.pop(example).label if example in self.labels else None
        self.excluded.add(example)
        flips = [Flip(example, old, None, "human")] if old is not None else []
        return self._steer("exclude", example, old, None, flips, dirty=old is not None)

    def include(self, example: int) -> StepRecord:
        self.excluded.discard(example)
        return self._steer("include", example, None, None, [], dirty=False)

    def set_params(self, alpha: float | None = None, t0: float | None = None) -> StepRecord:
        """Set alpha and/or T0 from now on; each one given is recorded with its value before and after."""
        if t0 is not None and t0 <= 0:
            raise ValueError("t0 must be positive")
        changes = []
        if alpha is not None:
            changes.append(ParamChange("alpha", self.alpha, float(alpha)))
            self.alpha = float(alpha)
        if t0 is not None:
            changes.append(ParamChange("t0", self.t0, float(t0)))
            self.t0 = float(t0)
        record = self._steer("set_param", None, None, None, [], dirty=False)
        record.params = changes
        record.note = ", ".join(f"{c.parameter}={_exact(c.new)}" for c in changes)
        return record

    def extend(self, steps: int) -> StepRecord:
        """Run `steps` more iterations whatever the stopping rule says (a finished run continued).
        Recorded as the step cap's change and the iteration the rule may stop at again (the
        iteration it was asked at plus `steps`: what a replay redoes)."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        until = max(self.iteration, 0) + int(steps)
        changes = [ParamChange("steps", self.config.steps, max(self.config.steps, until)),
                   ParamChange("extended_until", self.progress.extended_until, until)]
        self.progress.extended_until = until
        self.config = replace(self.config, steps=max(self.config.steps, until))
        record = self._steer("set_param", None, None, None, [], dirty=False)
        record.params = changes
        record.note = f"steps={self.config.steps} (extended by {int(steps)})"
        return record

    def _steer(self, kind: str, example, old, new, flips, dirty: bool) -> StepRecord:
        if dirty:
            self.progress.last_change = max(self.iteration, 0)
            self._invalidate_scores()
        return StepRecord(
            iteration=max(self.iteration, 0), kind=kind, example=example, old_label=old, proposed_label=new,
            accepted=True, flips=flips, labeled_count=len(self.labels),
        )

    def _invalidate_scores(self) -> None:
        raise NotImplementedError

    def _quiet_steps(self) -> int:
        """How many steps without an accepted change end a stop="labeled" search."""
        raise NotImplementedError


def _exact(value: float) -> str:
    """A float as short as it reads and exactly as it is, for the note people read."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)
