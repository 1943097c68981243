"""The arrangements megatron-core needs to build and run models on a machine without CUDA.

megatron-core assumes CUDA in a few places that are harmless to redirect on a CPU-only machine:
RoPE and pipeline buffers ask ``torch.cuda.current_device()`` for a device, dist-checkpointing calls
``torch.cuda.synchronize()``, and attention forks the CUDA RNG tracker. ``apply_cpu_patches`` points
those at the CPU; it does nothing when CUDA is available, and is idempotent.
"""

from __future__ import annotations

import contextlib

import torch

_applied = False


def cuda_available() -> bool:
    """True when this process can use a CUDA device."""
    return torch.cuda.is_available()


def apply_cpu_patches() -> None:
    """Make megatron-core's CUDA assumptions harmless on a CPU-only machine (no-op with CUDA)."""
    global _applied
    if _applied or cuda_available():
        return
    from megatron.core.tensor_parallel import random as mpu_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    tracker = mpu_random.get_cuda_rng_tracker()
    tracker.fork = lambda *args, **kwargs: contextlib.nullcontext()
    _applied = True


def causal_mask(seq_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The explicit causal mask megatron-core's local attention expects: bool [1, 1, s, s], True = masked."""
    return torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)[None, None]
