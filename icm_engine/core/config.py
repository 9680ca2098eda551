"""Every setting of a run in one place; the resolved config is stored with the run.

Each field is declared once with settings.setting() (help, choices, the range a form offers); the
CLI's flags and the studio's Run form are built from those declarations, so a new setting is one
field here.

Temperatures follow the paper's appendix D (T_0=10, T_min=0.01, beta=0.99) and section 2.3
(K=8 random initial labels, group-mates weighted 100 when sampling). The objective, the
calibration, alpha and the stopping rule default to what labeled two shared sentiment samples
(Yelp and Amazon review sentences) best at full coverage with the bundled model (docs/objectives.md,
"Choosing the objective": mean / centered, as accurate as chance / centered and twice as quick to label
everything), not to the paper's text: with the paper's sum a small model's search stops adding
labels after a few dozen, and without centering its lean to one label word wins.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from ..backends.base import KV_DTYPES  # re-exported: the settings' choices
from .settings import setting, settings

CALIBRATIONS = ("none", "centered")
SCORERS = ("exact", "naive", "prequential")
# How U(D) turns label log-probabilities into one number (scoring.predictability):
#   sum    - alpha * sum_i log P(y_i | x_i, D minus i) - I(D): the paper's text; each addition lowers U
#   chance - alpha * sum_i [log P(y_i | ...) + log |labels|] - I(D): each term counted against a coin
#            flip, so a label the model predicts better than chance raises U; equals `sum` plus a
#            constant for sets of one size, so relabels and fixes decide exactly as under `sum`
#   mean   - alpha * mean_i [log P(y_i | ...) - log P(other label | ...)] - I(D): the released
#            research code's mean signed log-odds
OBJECTIVES = ("sum", "chance", "mean")
# What the temperature counts: "iteration" (the paper: T = T0 / (1 + beta log n)) or "accepted"
# (the released code: T = T0 / (1 + 2 log(1 + a)), a = accepted changes of D so far).
CLOCKS = ("iteration", "accepted")
# When the search stops: after `steps` iterations, or once every example that is not excluded is
# labeled and `patience_sweeps` sweeps (sweep = one step per such example) passed without an
# accepted change, `steps` still capping it.
STOPS = ("steps", "labeled")
# How mutual predictability is measured: "icl" (Algorithm 1: in context, every other label as a
# demonstration) or "scalable" (Algorithm 3, appendix G: a learner fine-tuned on the other folds).
ALGORITHMS = ("icl", "scalable")


@dataclass(frozen=True)
class SearchConfig:
    alpha: float = setting(20.0, "weight of mutual predictability against the inconsistency count",
                           label="alpha", low=0.0, high=1e6)
    t0: float = setting(10.0, "initial temperature", label="T_0", low=1e-6, high=1e6)
    t_min: float = setting(0.01, "floor of the temperature", label="T_min", low=1e-6, high=1e6, form_format="%.4f")
    beta: float = setting(0.99, "cooling rate of the iteration clock: T = T0 / (1 + beta log n)",
                          label="beta", low=0.0, high=100.0)
    k_init: int = setting(8, "examples labeled at random before the search starts (K)",
                          label="K (random initial labels)", low=1, high=10_000)
    # initialization is not counted; with stop="steps" this is the number of iterations
    steps: int = setting(400, "cap on search iterations; with --stop steps, the number of iterations "
                              "(with --resume: the new total)", label="Steps (cap)", low=1, high=1_000_000)
    seed: int = setting(0, "drives the initial labels, sampling and acceptance draws", label="Seed",
                        low=0, high=2**31 - 1)
    group_weight: float = setting(100.0, "sampling weight of unlabeled examples that share a group with a labeled one",
                                  label="Group weight", low=1e-6, high=1e9)
    max_fix_iters: int = setting(10, "M in Algorithm 2: consistency fixes tried per step",
                                 label="Max fixes per step (M)", low=0, high=10_000)
    calibration: str = setting("centered", "none: raw label probabilities; centered: each label word's mean "
                                           "log-score removed (no gold)", label="Calibration", choices=CALIBRATIONS)
    use_consistency: bool = setting(True, "I(D) and ConsistencyFix on (off: the paper's ablation)",
                                    label="Use consistency (I(D) and fixes)")
    scorer: str = setting("exact", "exact (cached, same numbers as naive), naive (reference) or prequential "
                                   "(approximate)", label="Scorer", choices=SCORERS)
    # mean / centered: chance's accuracy in half the steps (docs/objectives.md)
    objective: str = setting("mean", "sum: the paper's text; chance: each term against a coin flip; mean: mean "
                                     "signed log-odds (released code)", label="Objective", choices=OBJECTIVES)
    clock: str = setting("iteration", "iteration: the paper's cooling; accepted: by accepted changes, "
                                      "T = T0 / (1 + 2 log(1 + a))", label="Clock", choices=CLOCKS)
    stop: str = setting("labeled", "steps: a fixed count; labeled: until every example is labeled plus "
                                   "--patience-sweeps quiet sweeps", label="Stop", choices=STOPS,
                        choice_names={"labeled": "until every example is labeled",
                                      "steps": "after a fixed number of steps"})
    patience_sweeps: float = setting(1.0, "with --stop labeled: sweeps without an accepted change before stopping",
                                     label="Quiet sweeps before stopping", low=0.0, high=100.0)
    final_pass: bool = setting(True, "label what the search left: argmax given the final labeled set, then "
                                     "ConsistencyFix", label="Final pass")
    balanced_init: bool = setting(False, "split the K initial labels evenly between the two labels",
                                  label="Balanced initial labels")
    algorithm: str = setting("icl", "icl: Algorithm 1, predictability in context (one context window); scalable: "
                                    "Algorithm 3, predictability by a learner fit on the other folds (any size)",
                             label="Algorithm", choices=ALGORITHMS,
                             choice_names={"icl": "in-context (Algorithm 1)", "scalable": "scalable (Algorithm 3)"})
    folds: int = setting(5, "scalable: folds F; each fold is relabeled by a learner fit on the others",
                         label="Folds (scalable)", low=2, high=100)
    init_run: int = setting(0, "scalable: start from a learner fit on this earlier run's labels (an in-context run "
                               "on a batch of the same data, matched by example id); 0: the model's zero-shot reading",
                            label="Initial labels from run (scalable; 0 = zero-shot)", low=0, high=2**31 - 1)
    # the released code's way with a dataset that does not fit one prompt (its README: batches of about
    # 256); runs/batches.py plans them and runs one in-context search per batch, docs/scalable.md
    batch_size: int = setting(0, "icl: split the dataset into batches of about this many examples (whole consistency "
                                 "groups, each batch small enough for one prompt to hold it) and run one search per "
                                 "batch, in order, under one parent run; 0: one search over everything",
                              label="Batch size (icl; 0 = one search over everything)", low=0, high=1_000_000)
    # A relabel at place p recomputes every leave-one-out prompt from p on (n of them at size n):
    # with F folds it recomputes F - 1. 4 by measurement (docs/speed.md, "In-context folds"): the
    # default 64-sentence search 3.3x faster than leave-one-out over 3 seeds, label accuracy
    # 0.938 +- 0.016 against 0.943 +- 0.024; the paper's presets keep leave-one-out
    icl_folds: int = setting(4, "icl: 0 shows each prompt every other label (leave-one-out, Algorithm 1); F >= 2 splits "
                                "the examples into F folds and shows each prompt the labels of the other folds only: "
                                "a change recomputes F - 1 prompts instead of one per labeled example (the scalable algorithm and the "
                                "prequential scorer have no use for it)",
                             label="In-context folds (icl; 0 = leave-one-out)", low=0, high=10_000)

    def __post_init__(self) -> None:
        for name, allowed in SEARCH_CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in _NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.t0 <= 0 or self.t_min <= 0:
            raise ValueError("temperatures must be positive")
        if self.alpha < 0 or self.beta < 0 or self.group_weight <= 0 or self.patience_sweeps < 0:
            raise ValueError("alpha, beta and patience_sweeps must be >= 0 and group_weight > 0")
        for name in _INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if abs(value) >= 2**63:  # the database holds 64-bit integers (the seed has a column of its own)
                raise ValueError(f"{name} must be below 2**63 (9223372036854775808), got {value}")
        if self.k_init < 1:
            raise ValueError("k_init must be at least 1")
        if self.folds < 2:
            raise ValueError("folds must be at least 2")
        if self.init_run < 0:
            raise ValueError("init_run must be a run id, or 0 for none")
        if self.batch_size < 0:
            raise ValueError("batch_size must be 0 (one search over everything) or a number of examples per batch")
        if self.batch_size and self.algorithm != "icl":
            raise ValueError("batch_size splits the in-context search (algorithm icl); the scalable algorithm takes "
                             "any size whole: leave batch_size at 0")
        if self.icl_folds == 1 or self.icl_folds < 0:
            raise ValueError("icl_folds must be 0 (leave-one-out) or at least 2")
        if self.steps < 0 or self.max_fix_iters < 0 or self.seed < 0:
            raise ValueError("steps, max_fix_iters and seed must be >= 0")


# Read from the declarations, so a new setting is checked by its kind without another list.
SEARCH_CHOICES = {s.name: s.choices for s in settings(SearchConfig) if s.choices}
_NUMBERS = tuple(s.name for s in settings(SearchConfig) if s.kind is float)
_INTEGERS = tuple(s.name for s in settings(SearchConfig) if s.kind is int)

# Named settings a user can start from; each stays editable and is stored resolved in the run.
PRESETS: dict[str, dict] = {
    # What this project measured best with the bundled model (the defaults).
    "default": {},
    # The paper's text: sum of log-probabilities, iteration clock, alpha 50, a fixed step count.
    "paper": {"objective": "sum", "calibration": "none", "clock": "iteration", "alpha": 50.0, "stop": "steps",
              "final_pass": False, "balanced_init": False, "icl_folds": 0},
    # The released research code as closely as this engine allows: mean signed log-odds, temperature
    # by accepted flips, alpha 30, K seed labels balanced between the two labels.
    "released_code": {"objective": "mean", "calibration": "none", "clock": "accepted", "alpha": 30.0,
                      "balanced_init": True, "icl_folds": 0},
}


def preset(name: str, **overrides) -> SearchConfig:
    """SearchConfig from a named preset, then `overrides` on top."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {name!r}")
    return SearchConfig(**{**PRESETS[name], **overrides})


# The model a run asks for. Loading checks the choices (runs/models.py), so a stored config with a
# value this release no longer offers still opens and fails only when its model is loaded.
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
QUANTIZATIONS = ("auto", "none", "nf4")
DEFAULT_MODEL = "gemma3-270m"


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting(DEFAULT_MODEL, "bundled name (gemma3-270m, smollm2-135m), local path, cached HF id, or an "
                                       "inference server as ENGINE+URL::MODEL, e.g. "
                                       "vllm+http://gpu-box:8000/v1::meta-llama/Llama-3.1-70B",
                        label="Model", flag="--model")
    device: str = setting("auto", "auto: cuda where torch sees a GPU, else cpu", label="Device", choices=DEVICES)
    dtype: str = setting("auto", "auto: float32 on CPU, bfloat16 on CUDA", label="Dtype", choices=DTYPES)
    quantization: str = setting("auto", "auto: nf4 on CUDA, none on CPU", label="Quantization", choices=QUANTIZATIONS)
    # None means the model's own window
    max_context: int | None = setting(None, "cap on prompt tokens (a llama-cpp-python server: the n_ctx it was "
                                            "started with)", label="Max context (0 = model's own)",
                                      kind=int, low=0, high=1_000_000)
    # compute by measurement: bfloat16 storage moved U by up to 5e-2 nats on Gemma 3 270M, int8 by 0.19
    # (n = 16, docs/speed.md "Storage dtype"); a run asks for the smaller ones knowingly
    kv_dtype: str = setting("compute", "how the prefix cache stores keys/values: compute (as the model computes "
                                       "them, exact), bfloat16 (half the memory), int8 (about a quarter)",
                            label="Key/value cache dtype", choices=KV_DTYPES,
                            choice_names={"compute": "as computed (exact)", "bfloat16": "bfloat16 (half the memory)",
                                          "int8": "int8 (a quarter)"})


LEARNERS = ("head", "lora")


@dataclass(frozen=True)
class LearnerConfig:
    """What fine-tunes on labels: `icm finetune` and the scalable search's fold scoring.

    head: a logistic head on the frozen model's hidden state at the label position, added to the
    model's own zero-shot log-odds (so it starts as the model's reading and moves from it at an L2
    cost); lora: LoRA adapters on every linear layer (peft), trained by TRL's SFTTrainer on
    prompt/completion pairs, with the paper's 70B settings (rank 16, lr 5e-5, 3 epochs).
    """

    learner: str = setting("head", "head: logistic head on frozen hidden states (seconds on CPU); lora: LoRA "
                                    "adapters through TRL (minutes on CPU)", label="Learner", choices=LEARNERS)
    # 2/3 of the depth, as the CCS probe (evaluation/ccs.py) and for the same reasons; measured in the
    # docs/scalable.md: blocks 9-15 of Gemma 3 270M read sentiment best, the last ones less
    layer: int = setting(-1, "head: the block whose output it reads (-1: the one at 2/3 of the depth)",
                         label="Head layer (-1 = 2/3 of depth)", low=-1, high=1000, flag="--head-layer")
    # docs/scalable.md, "The reading context": with 8 demonstrations before the query Gemma 3 270M reads
    # Amazon sentiment at 0.93 instead of 0.75, whatever their labels (zero-shot, random or gold)
    context: int = setting(8, "head: demonstrations before each example when the model reads it (examples of "
                              "the same data labeled by the model's own zero-shot reading; 0: the bare query)",
                           label="Head reading context", low=0, high=256, flag="--head-context")
    l2: float = setting(0.1, "head: L2 penalty on its weights over standardized features (per example)",
                        label="Head L2", low=0.0, high=1e6, flag="--head-l2")
    lora_rank: int = setting(16, "lora: adapter rank r (the paper's 70B runs: 16)", label="LoRA rank", low=1, high=1024)
    lora_alpha: float = setting(32.0, "lora: adapter scale alpha (update scaled by alpha / r)", label="LoRA alpha",
                                low=0.0, high=1e4)
    learning_rate: float = setting(5e-5, "lora: learning rate (the paper's LoRA runs: 5e-5)", label="Learning rate",
                                   low=1e-8, high=1.0, form_format="%.1e")
    epochs: float = setting(3.0, "lora: passes over the labels (the paper: 3)", label="Epochs", low=0.01, high=100.0)
    # --lora-batch-size: `icm run`'s --batch-size is the search's batches (SearchConfig.batch_size)
    batch_size: int = setting(8, "lora: examples per optimizer step", label="LoRA batch size", low=1, high=4096,
                              flag="--lora-batch-size")

    def __post_init__(self) -> None:
        if self.learner not in LEARNERS:
            raise ValueError(f"learner must be one of {LEARNERS}, got {self.learner!r}")
        if isinstance(self.context, bool) or not isinstance(self.context, int) or self.context < 0:
            raise ValueError(f"context must be a whole number of demonstrations, 0 or more; got {self.context!r}")
        if self.l2 < 0 or self.lora_rank < 1 or self.learning_rate <= 0 or self.epochs <= 0 or self.batch_size < 1:
            raise ValueError("l2 must be >= 0; lora_rank, batch_size >= 1; learning_rate and epochs > 0")


@dataclass(frozen=True)
class RunConfig:
    task: str
    dataset: str
    search: SearchConfig = field(default_factory=SearchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)  # the scalable search's fold scorer
    # A batch run's examples (dataset indices): its search sees only these, every other example
    # excluded from the start (runs/batches.py); None: the whole dataset.
    members: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.members is not None:
            if not self.members or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.members):
                raise ValueError(f"members must be example indices (0 or more), at least one; got {self.members!r}")
            object.__setattr__(self, "members", tuple(self.members))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.members is None:  # a run over the whole dataset stores no members (as before they existed)
            del data["members"]
        else:
            data["members"] = list(self.members)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(
            task=data["task"],
            dataset=data["dataset"],
            # a run stored before in-context folds existed was scored leave-one-out: it resumes so
            search=SearchConfig(**{"icl_folds": 0, **data.get("search", {})}),
            model=ModelConfig(**data.get("model", {})),
            learner=LearnerConfig(**data.get("learner", {})),
            members=None if data.get("members") is None else tuple(data["members"]),
        )
