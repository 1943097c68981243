"""FP8 block dequantization equals transformers' own (``Fp8Dequantize``), bit for bit."""

import pytest
import torch

from bridge_core.model.quantization import dequantize_fp8_blockwise

fp8 = pytest.importorskip("transformers.integrations.finegrained_fp8")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_equals_transformers_fp8_dequantize(dtype):
    torch.manual_seed(0)
    weight = (torch.randn(256, 384) * 3).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(2, 3) * 1e-2 + 1e-4  # fp32 scales that bf16 cannot hold exactly
    reference = fp8.Fp8Dequantize(None)._dequantize_one(weight, scale_inv, output_dtype=dtype)
    assert torch.equal(dequantize_fp8_blockwise(weight, scale_inv, dtype=dtype), reference)


def test_ragged_edges_equal_the_per_block_fp32_product():
    torch.manual_seed(1)
    weight = (torch.randn(200, 130) * 3).to(torch.float8_e4m3fn)
    scale_inv = torch.rand(2, 2) * 1e-2 + 1e-4
    out = dequantize_fp8_blockwise(weight, scale_inv)
    for i, rows in enumerate((slice(0, 128), slice(128, 200))):
        for j, cols in enumerate((slice(0, 128), slice(128, 130))):
            expected = (weight[rows, cols].float() * scale_inv[i, j]).to(torch.bfloat16)
            assert torch.equal(out[rows, cols], expected), (i, j)
