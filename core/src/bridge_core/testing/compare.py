"""Bit-exact comparison of two HF folders' tensors (names, dtypes, shapes and values)."""

from __future__ import annotations

from pathlib import Path


def compare_hf_weights(original: str | Path, exported: str | Path) -> list[str]:
    """Every difference between the two folders' safetensors, as readable lines (empty: identical)."""
    import torch

    from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint

    a, b = SafetensorsCheckpoint(original), SafetensorsCheckpoint(exported)
    problems = [f"missing from export: {k}" for k in sorted(set(a) - set(b))]
    problems += [f"not in original: {k}" for k in sorted(set(b) - set(a))]
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{key}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)}")
        elif not torch.equal(x, y):
            problems.append(f"{key}: values differ (max |d| {(x.float() - y.float()).abs().max().item():.3g})")
    return problems


def max_abs_diff(a, b) -> float:
    """``max |a - b|`` in fp32 on the CPU: the tensors may live on different devices (a model on the
    GPU against transformers' logits on the CPU)."""
    return (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item()
