"""The prefix store's budget and hit rate, as the Live page reports them."""
from __future__ import annotations

import numpy as np

from app.readers import store_usage
from icm_engine.backends.base import BackendStats, CacheUsage, LabelQuery
from tests.tiny_model import build_tiny_model_dir


def test_a_repeated_prompt_is_read_from_the_store_and_counted_as_reused(tmp_path):
    from icm_engine.core.config import ModelConfig
    from icm_engine.runs.models import load_model

    model = load_model(ModelConfig(str(build_tiny_model_dir(tmp_path / "tiny")), device="cpu"),
                       progress=lambda *a: None, cache_budget_mb=64)
    query = LabelQuery(("The food was great and the staff were kind.", "Claim: the review is positive."), ("False", "True"))
    first = model.label_logprobs([query])
    assert model.stats.tokens_reused == 0 and model.stats.hit_rate == 0.0
    second = model.label_logprobs([query])
    np.testing.assert_allclose(first, second, atol=1e-5)
    assert model.stats.tokens_reused > 0 and 0.3 < model.stats.hit_rate < 1.0  # the last token is always forwarded
    usage = model.cache_usage()
    assert usage.budget_bytes == 64 * 2**20 and 0 < usage.held_bytes <= usage.peak_bytes <= usage.budget_bytes
    assert usage.kv_dtype == "compute" and model.naive().cache_usage() is None


def test_the_live_caption_names_budget_peak_evictions_and_hit_rate():
    usage = CacheUsage(held_bytes=300 * 2**20, budget_bytes=4096 * 2**20, peak_bytes=512 * 2**20, evictions=7, kv_dtype="int8")
    stats = BackendStats(tokens_forwarded=25, tokens_reused=75)
    assert store_usage(usage, stats.hit_rate) == (
        "Key/value store (int8, shared by the runs on this model): 300 MiB held of a 4,096 MiB budget "
        "(peak 512 MiB, 7 evictions); 75% of this run's prompt tokens read from it.")
    assert store_usage(None, 0.5) is None
    assert store_usage(usage, None).endswith("no prompt tokens yet.")
