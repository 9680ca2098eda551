"""Every setting of a run in one place; the resolved config is stored with the run.

Defaults follow the paper's appendix D (T_0=10, T_min=0.01, beta=0.99, alpha=50) and
section 2.3 (K=8 random initial labels, group-mates weighted 100 when sampling).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

CALIBRATIONS = ("none", "centered")
SCORERS = ("exact", "naive", "prequential")


@dataclass(frozen=True)
class SearchConfig:
    alpha: float = 50.0  # weight of mutual predictability against inconsistency count
    t0: float = 10.0  # initial temperature
    t_min: float = 0.01  # floor of the temperature
    beta: float = 0.99  # cooling rate: T = max(t_min, t0 / (1 + beta * log n))
    k_init: int = 8  # examples labeled at random before the search starts
    steps: int = 100  # search iterations (not counting initialization)
    seed: int = 0  # drives initial labels, demo order, sampling and acceptance draws
    group_weight: float = 100.0  # sampling weight of unlabeled examples sharing a group with labeled ones
    max_fix_iters: int = 10  # M in Algorithm 2
    calibration: str = "none"  # "none": the paper's objective; "centered": label bias removed
    use_consistency: bool = True  # False: the paper's ablation without I(D) and ConsistencyFix
    scorer: str = "exact"  # "exact" (cached), "naive" (reference) or "prequential" (approximate)

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {SCORERS}, got {self.scorer!r}")
        if self.t0 <= 0 or self.t_min <= 0:
            raise ValueError("temperatures must be positive")
        if self.k_init < 1:
            raise ValueError("k_init must be at least 1")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "gemma3-270m"  # a bundled name, a Hugging Face id in the local cache, or a local path
    device: str = "auto"  # "auto", "cpu" or "cuda"
    dtype: str = "auto"  # "auto" (fp32 on CPU, bf16 on CUDA), "float32", "bfloat16"
    quantization: str = "auto"  # "auto" (nf4 on CUDA, none on CPU), "nf4", "none"
    max_context: int | None = None  # cap on prompt tokens; None means the model's own window


@dataclass(frozen=True)
class RunConfig:
    task: str
    dataset: str
    search: SearchConfig = field(default_factory=SearchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return cls(
            task=data["task"],
            dataset=data["dataset"],
            search=SearchConfig(**data.get("search", {})),
            model=ModelConfig(**data.get("model", {})),
        )
