"""A model chunk as built (DDP / Float16Module wrappers included) and the module inside."""

from __future__ import annotations

from typing import Any

import torch


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / Float16Module wrappers."""
    while hasattr(chunk, "module") and isinstance(chunk.module, torch.nn.Module):
        chunk = chunk.module
    return chunk


def unwrap_chunks(model_chunks: Any) -> list[torch.nn.Module]:
    """The model chunk list (a single module becomes a list of one), unwrapped from DDP/FP16 wrappers."""
    chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    return [unwrap(c) for c in chunks]
