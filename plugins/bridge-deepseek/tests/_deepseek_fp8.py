"""FP8 toy folders in DeepSeek-V3's release format: e4m3 weights with per-block ``weight_scale_inv``.

Every linear weight of attention and MLPs (routed and shared experts included) is quantized with real
scales (``amax / 448`` per block); embeddings, norms, the router and ``lm_head`` stay as they were, as in
the released checkpoint. ``config.json`` gains ``quantization_config`` with ``weight_block_size``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

QUANTIZED = re.compile(r"\.(self_attn\.(?!\w*layernorm)\w+|mlp\.(shared_experts\.|experts\.\d+\.)?\w+_proj)\.weight$")
E4M3_MAX = 448.0


def quantize_blockwise(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(e4m3 weight, fp32 scale_inv [ceil(rows/b0), ceil(cols/b1)])`` with ``weight ~= q * scale_inv``."""
    rows, cols = weight.shape
    b0, b1 = block
    grid = (-(-rows // b0), -(-cols // b1))
    scale = torch.empty(grid, dtype=torch.float32)
    w = weight.float()
    for i in range(grid[0]):
        for j in range(grid[1]):
            tile = w[i * b0 : (i + 1) * b0, j * b1 : (j + 1) * b1]
            scale[i, j] = tile.abs().max().clamp(min=1e-12) / E4M3_MAX
    expanded = scale.repeat_interleave(b0, 0).repeat_interleave(b1, 1)[:rows, :cols]
    return (w / expanded).to(torch.float8_e4m3fn), scale


def fp8_copy(folder: Path, out: Path, block: tuple[int, int]) -> Path:
    """``folder`` (a bf16 V3 toy) re-saved with FP8 block weights and ``quantization_config``."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, tensor in load_file(folder / "model.safetensors").items():
        if QUANTIZED.search(name):
            tensors[name], tensors[name + "_scale_inv"] = quantize_blockwise(tensor, block)
        else:
            tensors[name] = tensor
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "fmt": "e4m3",
        "activation_scheme": "dynamic",
        "weight_block_size": list(block),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def transformers_dequantized(fp8_folder: Path, out: Path, block: tuple[int, int]) -> Path:
    """The bf16 folder transformers' dequantization formula (``_dequantize_fp8_weight`` in fp32, then a cast
    to bf16, as its ``Fp8Dequantize`` does) gives from ``fp8_folder``: the reference an import must equal."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    out.mkdir(parents=True, exist_ok=True)
    source = load_file(fp8_folder / "model.safetensors")
    tensors = {}
    for name, tensor in source.items():
        if name.endswith("_scale_inv"):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            scale = source[name + "_scale_inv"]
            tensor = _dequantize_fp8_weight(tensor, scale, list(block), torch.float32).to(torch.bfloat16)
        tensors[name] = tensor
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((fp8_folder / "config.json").read_text())
    config.pop("quantization_config")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
