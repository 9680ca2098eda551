"""What a forward on CUDA needs besides the model: exact attention kernels and honest timings."""
from __future__ import annotations

import contextlib

import torch


def attention_kernels(device: torch.device):
    """On CUDA, every attention kernel but PyTorch's memory-efficient one.

    Measured on an H200 (torch 2.11, tests/test_cuda.py): with the memory-efficient SDPA kernel,
    a tiny Gemma 3's cached scores differed from the uncached ones by up to 0.08 nats in
    float32, under masks with a sliding window; with the math, flash or cuDNN kernels they
    agreed to 1e-6, as on CPU. Exactness is this backend's promise, so that kernel is out.
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a timer read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
