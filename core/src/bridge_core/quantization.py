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

    The DeepSeek-V3 / Qwen3-FP8 layout: each ``block`` of the weight shares one inverse scale. The
    product is computed in ``dtype`` (bf16 by default: ``w.to(bf16) * scale_inv`` per block).
    """
    rows, cols = weight.shape
    b0, b1 = block
    expected = (-(-rows // b0), -(-cols // b1))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"scale_inv has shape {tuple(scale_inv.shape)}, expected {expected} for a {rows}x{cols} "
            f"weight in {b0}x{b1} blocks"
        )
    scale = scale_inv.to(dtype).repeat_interleave(b0, dim=0).repeat_interleave(b1, dim=1)[:rows, :cols]
    return weight.to(dtype) * scale
