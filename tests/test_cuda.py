"""The fast exact scorer on a CUDA GPU, in float32, 4-bit NF4 and bfloat16 (skipped without one).

CI has no GPU; these run on a lent GPU machine through scripts/gpu_check.sh. Tiny random models
(tests/tiny_model.py): exactness does not depend on the weights, only on the arithmetic.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from icm_engine.core.scoring import Scorer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from tests.tiny_model import build_tiny_gemma3_dir, build_tiny_model_dir

    root = tmp_path_factory.mktemp("tiny")
    return {"llama": build_tiny_model_dir(root / "llama"), "gemma3": build_tiny_gemma3_dir(root / "gemma3")}


@pytest.fixture(scope="module")
def sentiment():
    from icm_engine.data.datasets import load_sample

    return load_sample("sentiment_yelp", task="sentiment")


def _step_sets(rng):
    """A labeled set, then what each step type asks to score: an addition, a relabel, two fix options."""
    order = rng.choice(40, size=12, replace=False).tolist()
    labels = {i: int(rng.integers(2)) for i in order}
    a, b = order[2], order[7]
    return [(order, labels), (order + [50], {**labels, 50: 1}),
            (order, {**labels, order[5]: 1 - labels[order[5]]}),
            *[(order, {**labels, a: ya, b: yb}) for ya, yb in ((0, 1), (1, 0))]]


def _max_differences(backend, dataset, seed: int = 0):
    fast, naive = Scorer(backend, dataset.task, dataset.examples), Scorer(backend.naive(), dataset.task, dataset.examples)
    sets = _step_sets(np.random.default_rng(seed))
    fast_evals = [fast.evaluate(o, l) for o, l in sets]  # one by one, as a search asks: the cache is warm
    naive_evals = naive.evaluate_many(sets)
    du = max(abs(f.utility(1.0) - g.utility(1.0)) for f, g in zip(fast_evals, naive_evals))
    dp = max(float(np.max(np.abs(f.raw[i] - g.raw[i]))) for f, g in zip(fast_evals, naive_evals) for i in f.raw)
    return du, dp


# (dtype, quantization, bound in nats on the summed log-probabilities). float32 compute must be
# exact up to round-off, 4-bit weights included (NF4 dequantizes to the compute dtype). bfloat16
# keeps 8 bits of mantissa: the cached path forwards the same tokens in differently shaped
# batches, so its rounding differs; the bound is loose and the figure is printed.
SETTINGS = [("float32", "none", 1e-3), ("float32", "nf4", 1e-3), ("bfloat16", "nf4", 0.5)]


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("dtype,quantization,bound", SETTINGS)
def test_fast_equals_naive_on_cuda(tiny_dirs, sentiment, kind, dtype, quantization, bound):
    from icm_engine.core.config import ModelConfig
    from icm_engine.runs.models import load_model

    backend = load_model(ModelConfig(str(tiny_dirs[kind]), device="cuda", dtype=dtype, quantization=quantization),
                         progress=lambda *_: None)
    assert backend.device.type == "cuda" and backend.info.quantization == quantization
    du, dp = _max_differences(backend, sentiment)
    print(f"\n{kind} {dtype} {quantization} on {torch.cuda.get_device_name()}: "
          f"max |dU| {du:.2e} nats, max |d log P| {dp:.2e}")
    assert du <= bound
