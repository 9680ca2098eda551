"""Raw throughput of a transformers model: one uncached forward over random tokens (for `icm bench`)."""
from __future__ import annotations

import time

import torch

from .device import attention_kernels, synchronize


def forward_tokens_per_second(model, n_tokens: int) -> float:
    """Tokens per second of one uncached forward of the model's base over n_tokens random tokens."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(min(100, vocab - 1), vocab, (1, n_tokens), generator=generator).to(device)
    # A GPU forward of a small model lasts milliseconds: warm up at full length (kernel choice,
    # allocator) and take the best of several. On CPU one forward lasts seconds; once is enough.
    on_gpu = device.type == "cuda"
    with torch.inference_mode(), attention_kernels(device):
        model.base_model(input_ids=ids if on_gpu else ids[:, :8], use_cache=False)
        synchronize(device)
        best = float("inf")
        for _ in range(5 if on_gpu else 1):
            start = time.perf_counter()
            model.base_model(input_ids=ids, use_cache=False)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return n_tokens / best
