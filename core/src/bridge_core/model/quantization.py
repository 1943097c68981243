"""Dequantization helpers a bridge calls from ``maybe_modify_loaded_hf_weight``."""

from __future__ import annotations

import torch


def dequantize_fp8_blockwise(
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``weight`` (FP8, ``[rows, cols]``) times its per-block ``scale_inv`` (``[ceil(rows/b0), ceil(cols/b1)]``).

    The DeepSeek-V3 / Qwen3-FP8 layout: each ``block`` of the weight shares one inverse scale; edge
    blocks may be partial (ragged shapes). The product is computed in fp32 and then cast to ``dtype``,
    as transformers' ``Fp8Dequantize`` does, so the result equals its dequantized weights bit for bit
    (a product in bf16 would round the fp32 scale first).
    """
    rows, cols = weight.shape
    b0, b1 = block
    expected = (-(-rows // b0), -(-cols // b1))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"scale_inv has shape {tuple(scale_inv.shape)}, expected {expected} for a {rows}x{cols} "
            f"weight in {b0}x{b1} blocks"
        )
    scale = scale_inv.to(torch.float32).repeat_interleave(b0, dim=0).repeat_interleave(b1, dim=1)[:rows, :cols]
    return (weight.to(torch.float32) * scale).to(dtype)
