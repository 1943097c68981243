"""MXFP4 (OCP microscaling FP4) dequantization of GPT-OSS's expert weights.

A quantized tensor ``name`` is stored as ``name_blocks [..., out, in/32, 16]`` (uint8, two E2M1 codes
per byte, the low nibble the even element) and ``name_scales [..., out, in/32]`` (E8M0: each group of
32 values is multiplied by ``2 ** (scale - 127)``). Dequantized: ``[..., out, in]``. The arithmetic is
transformers' (``integrations.mxfp4.convert_moe_packed_tensors``: a lookup in ``dtype``, then
``ldexp``), so the values are equal bit for bit; unlike it, no transpose (the caller places them).
It runs on meta tensors too (the engine's shape dry run).
"""

from __future__ import annotations

import torch

# E2M1 code -> value (bit 3 is the sign).
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
GROUP = 32


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``blocks [..., out, in/32, 16]`` (uint8) and ``scales [..., out, in/32]`` (uint8) -> ``[..., out, in]``."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.dim() < 2 or blocks.shape[-1] != GROUP // 2 or tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(
            f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not fit "
            f"(expected blocks [..., out, groups, {GROUP // 2}] and scales [..., out, groups])"
        )
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    low, high = lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]
    values = torch.stack([low, high], dim=-1).flatten(-2)  # [..., out, groups, 32]
    exponent = scales.to(torch.int32) - 127
    out = torch.ldexp(values, exponent.unsqueeze(-1))
    return out.to(dtype).flatten(-2)
