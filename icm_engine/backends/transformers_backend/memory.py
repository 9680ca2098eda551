"""How much memory the transformers backend may take: the prefix store's budget, how it gives memory
back when other processes need it, and how many bytes one batched forward may pad.

Policy only: the store itself is kv_cache.PrefixKVStore, the batching is prefix_batches.
"""
from __future__ import annotations

import os

import torch

from icm_engine.backends.kv_cache import PrefixKVStore

# Default prefix-store budget on CPU: this share of the memory the system has free, at most
# CPU_CACHE_BUDGET_CAP_MB. A fixed 4 GB thrashed at n=64 demos on Gemma 3 270M (fp32 keys/values
# take ~37 KB a token, so one leave-one-out state is ~5 GB and a step needs two).
CPU_CACHE_BUDGET_FRACTION = 0.5
CPU_CACHE_BUDGET_CAP_MB = 12 * 1024
CPU_CACHE_BUDGET_FLOOR_MB = 1024
# The budget is set at load time, but other processes (a second search, the studio) may claim
# memory later: when the system's available memory falls under this, the store evicts what is
# missing after each batch, so it shrinks before the kernel kills a process. It keeps at least a
# quarter of its budget: freed blocks do not always show up as available memory again, and a
# store that emptied itself batch after batch would recompute every prompt from scratch.
CPU_LOW_MEMORY_MB = 2048
CPU_PRESSURE_KEEP_FRACTION = 0.25
CACHE_BUDGET_ENV = "ICM_KV_CACHE_MB"  # an explicit budget in MB, for every TransformersLM of the process
GPU_CACHE_BUDGET_FRACTION = 0.5  # default on CUDA: this share of the memory free after loading
# Padded key/value buffer of one batched forward: big enough to fill the matrix units with rows,
# small enough to stay in memory next to the prefix store.
CPU_BATCH_BYTES = 1 << 30
GPU_BATCH_BYTES = 4 << 30
MAX_BATCH_ROWS = 64


def cache_budget_bytes(device: torch.device, cache_budget_mb: float | None) -> int:
    """The prefix store's budget: the caller's MB, else the environment's, else the default."""
    if cache_budget_mb is None and os.environ.get(CACHE_BUDGET_ENV):
        cache_budget_mb = float(os.environ[CACHE_BUDGET_ENV])
    if cache_budget_mb is None:
        return default_budget_bytes(device)
    return int(cache_budget_mb * 2**20)


def default_budget_bytes(device: torch.device) -> int:
    """Half the GPU memory still free (a 70B model's keys/values take ~320 KB per token, so a fixed
    few GB would evict a 32-demo leave-one-out batch); on CPU a share of the free memory, capped."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        return int(GPU_CACHE_BUDGET_FRACTION * free_bytes)
    free_bytes = available_memory_bytes()
    budget = min(CPU_CACHE_BUDGET_FRACTION * free_bytes, CPU_CACHE_BUDGET_CAP_MB * 2**20)
    return int(max(budget, CPU_CACHE_BUDGET_FLOOR_MB * 2**20))


def available_memory_bytes() -> int:
    """MemAvailable (free plus reclaimable page cache) on Linux, else free pages, else 0."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: the caller's floor
        return 0


def relieve_memory_pressure(store: PrefixKVStore) -> None:
    """Evict from the store what the machine lacks under CPU_LOW_MEMORY_MB, down to a floor."""
    available = available_memory_bytes()
    missing = CPU_LOW_MEMORY_MB * 2**20 - available
    if available > 0 and missing > 0:
        store.release(missing, keep_bytes=int(CPU_PRESSURE_KEEP_FRACTION * store.budget_bytes))


def batch_bytes(device: torch.device) -> int:
    """Most bytes of padded keys/values (or hidden states) one batched forward may hold."""
    return GPU_BATCH_BYTES if device.type == "cuda" else CPU_BATCH_BYTES


def kv_bytes_per_token(model, kv_dtype: str = "compute") -> int:
    """Bytes of keys and values one token takes over all layers: as computed (for sizing batches),
    or as the prefix store keeps them in kv_dtype (int8's per-token scales left out: a few %)."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    element = element if element >= 2 else 2  # quantized weights: keys/values are still 16-bit
    element = {"bfloat16": 2, "int8": 1}.get(kv_dtype, element)
    return 2 * config.num_hidden_layers * heads * head_dim * element
