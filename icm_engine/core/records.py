"""What the search reports and persists: one StepRecord per iteration, with its flips and fixes.

Examples are referred to by their index in the dataset (0..N-1, the order they were loaded in).
Labels are 0 (False) and 1 (True); None means unlabeled.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Why a label changed: the search's initialization, an accepted proposal, a consistency fix
# (Algorithm 2, or Algorithm 4 in a scalable run) inside an accepted step, the final pass that
# labels what the search left (argmax given the final D), a person steering the run, or (scalable
# ICM, Algorithm 3) a fold relabeled by a model fit on the other folds.
FLIP_CAUSES = ("initial", "proposal", "fix", "final_pass", "human", "fold")

# Kinds of events: the search's own iterations, its final pass, and steering actions taken by a
# person (an extension of the step budget is recorded as set_param). The one list of them.
SEARCH_KINDS = ("init", "propose", "fold")  # fold: one step of scalable ICM (core/scalable.py)
STEERING_KINDS = ("pin", "unpin", "exclude", "include", "set_param")
EVENT_KINDS = (*SEARCH_KINDS, "final_pass", *STEERING_KINDS)

# What a "set_param" event may change: alpha and T0 (Steering.set_params), or the step budget
# (Steering.extend: the step cap, and the iteration before which no stopping rule may end the run).
PARAMETERS = ("alpha", "t0", "steps", "extended_until")


@dataclass(frozen=True)
class ParamChange:
    """One parameter a person changed: its value before (None where the run did not record it: a
    database older than schema 5, or no value yet) and after. Stored as a row, never as text."""

    parameter: str  # one of PARAMETERS
    old: float | None
    new: float


@dataclass
class Fix:
    """One ConsistencyFix decision on an inconsistent pair (Algorithm 2, lines 3-8)."""

    pair: tuple[int, int]
    before: tuple[int, int]
    after: tuple[int, int]  # the best consistent option found
    applied: bool  # U did not decrease, so the option replaced the pair's labels
    u_before: float
    u_after: float


@dataclass
class Flip:
    example: int
    old: int | None
    new: int | None
    cause: str
    partner: int | None = None  # for a fix: the other example of the pair


@dataclass
class LabelState:
    """One labeled example of the current labeled set D."""

    label: int
    position: int  # place in the demonstration order (new labels go last)
    logp: tuple[float, float] | None = None  # log P(False), log P(True) given D minus this example, as scored
    pinned: bool = False


@dataclass(frozen=True)
class UtilityParts:
    """U(D) with the two terms it is made of, as a StepRecord stores them. Built only by
    scoring.utility_parts, the one place the formula U = alpha * P - I is written."""

    u: float
    alpha_p: float  # alpha * P(D)
    i: int  # I(D)


@dataclass
class StepRecord:
    iteration: int
    kind: str
    temperature: float | None = None
    example: int | None = None
    old_label: int | None = None
    proposed_label: int | None = None
    proposal_logp: tuple[float, float] | None = None  # label log-probs that chose the proposal
    fixes: list[Fix] = field(default_factory=list)
    u_before: float | None = None
    u_after: float | None = None
    ap_before: float | None = None  # alpha * P(D)
    ap_after: float | None = None
    i_before: int | None = None  # I(D), the count of inconsistent pairs
    i_after: int | None = None
    delta: float | None = None
    accept_prob: float | None = None
    draw: float | None = None
    accepted: bool = False
    flips: list[Flip] = field(default_factory=list)
    labeled_count: int = 0
    model_calls: int = 0
    tokens_forwarded: int = 0
    tokens_reused: int = 0  # prompt tokens a prefix store served instead of forwarding (backends.base.BackendStats)
    seconds: float = 0.0
    note: str = ""  # for people to read; nothing parses it (a set_param event's values are in params)
    params: list[ParamChange] = field(default_factory=list)  # a set_param event's changes, in order

    def score_before(self, parts: UtilityParts) -> None:
        self.u_before, self.ap_before, self.i_before = parts.u, parts.alpha_p, parts.i

    def score_after(self, parts: UtilityParts) -> None:
        self.u_after, self.ap_after, self.i_after = parts.u, parts.alpha_p, parts.i

    def score_change(self, after: UtilityParts) -> None:
        """U after the step and delta = U(after) - U(before), the difference acceptance reads."""
        self.score_after(after)
        self.delta = self.u_after - self.u_before

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchSnapshot:
    """Everything needed to continue a search exactly where it stopped."""

    iteration: int
    labels: dict[int, LabelState]
    excluded: set[int]
    rng_state: dict
    next_position: int
    alpha: float
    t0: float
    u: float | None = None
    ap: float | None = None
    inconsistencies: int | None = None
    progress: "SearchProgress" = field(default_factory=lambda: SearchProgress())


@dataclass
class SearchProgress:
    """Counters the clock and the stopping rule read; stored with every step."""

    accepted_changes: int = 0  # accepted proposals that changed D (the "accepted" clock counts these)
    last_change: int = 0  # iteration of the last change of D (search or person)
    labeled_at: int | None = None  # first iteration at which the search had labeled every active example
    search_labeled: int | None = None  # examples the search itself had labeled when its final pass ran
    extended_until: int | None = None  # a person asked for more steps: no stopping rule before this iteration
