"""FP8 sources: DeepSeek-V3's e4m3 block weights with ``weight_scale_inv`` are dequantized on import.

Two toys: 32x32 blocks, which leave ragged edge blocks (kv_a_proj 40 rows, q_a_proj 48: partial tiles),
checked against transformers' dequantization formula; 8x8 blocks, which divide every weight, loaded by
transformers itself (on a CPU it dequantizes FP8 checkpoints to bf16) and compared bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _deepseek_fp8 import fp8_copy, transformers_dequantized
from _deepseek_toys import V3_TOY, with_expert_bias
from bridge_core import AutoBridge
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

BF16_V3 = ToyModel("DeepseekV3ForCausalLM", V3_TOY, dtype="bfloat16", seed=4)


@pytest.fixture(scope="module")
def bf16_v3(toy_model_factory, tmp_path_factory) -> Path:
    return with_expert_bias(toy_model_factory(BF16_V3), tmp_path_factory.mktemp)


def import_export(folder: Path, out: Path, dtype=None):
    """Import ``folder``, export it to ``out``; the model's logits on the sample ids (fp32 model when ``dtype``)."""
    bridge = AutoBridge.from_hf_pretrained(folder, torch_dtype=dtype)
    ids = sample_ids(1000, seq=32)
    try:
        model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
        bridge.save_hf_pretrained(model, out)
        return forward_logits(model, ids, vocab_size=1000), ids
    finally:
        destroy_model_parallel()


def test_ragged_fp8_import_equals_transformers_dequantization(bf16_v3, tmp_path):
    block = (32, 32)
    fp8 = fp8_copy(bf16_v3, tmp_path / "fp8", block)
    from safetensors import safe_open

    with safe_open(fp8 / "model.safetensors", "pt") as f:
        scale = f.get_tensor("model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv")
        assert f.get_slice("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").get_dtype() == "F8_E4M3"
    assert tuple(scale.shape) == (2, 2) and scale.std() > 0  # 40x64 in 32x32 blocks: a partial row of tiles
    reference = transformers_dequantized(fp8, tmp_path / "reference", block)
    import_export(fp8, tmp_path / "export")
    assert compare_hf_weights(reference, tmp_path / "export") == []
    # the negative control: a cast that ignores the scales is nowhere near
    from safetensors.torch import load_file

    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    exported, fp8_tensors = load_file(tmp_path / "export" / "model.safetensors"), load_file(fp8 / "model.safetensors")
    cast = fp8_tensors[name].to(torch.bfloat16).float()
    assert (cast - exported[name].float()).abs().max() > 100 * exported[name].float().abs().max()


def test_fp8_logits_match_the_dequantized_model(bf16_v3, tmp_path):
    block = (32, 32)
    fp8 = fp8_copy(bf16_v3, tmp_path / "fp8", block)
    reference = transformers_dequantized(fp8, tmp_path / "reference", block)
    logits, ids = import_export(fp8, tmp_path / "export", dtype=torch.float32)
    assert max_abs_diff(logits, hf_logits(reference, ids, dtype=torch.float32)) <= 1e-4


def test_fp8_import_equals_transformers_own_fp8_loading(bf16_v3, tmp_path):
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config

    block = (8, 8)  # divides every weight: transformers' loader needs that
    fp8 = fp8_copy(bf16_v3, tmp_path / "fp8", block)
    # dequantize as on a CPU also where a GPU is visible (transformers keeps FP8 weights there)
    dequantize = FineGrainedFP8Config(weight_block_size=block, dequantize=True)
    theirs = AutoModelForCausalLM.from_pretrained(fp8, dtype=torch.bfloat16, quantization_config=dequantize)
    assert theirs.model.layers[0].self_attn.q_a_proj.weight.dtype == torch.bfloat16
    theirs.save_pretrained(tmp_path / "theirs")
    import_export(fp8, tmp_path / "export")
    assert compare_hf_weights(tmp_path / "theirs", tmp_path / "export") == []


def test_an_fp8_weight_without_its_scale_is_a_one_line_error(bf16_v3, tmp_path):
    from bridge_core.errors import ConfigError
    from safetensors.torch import load_file, save_file

    fp8 = fp8_copy(bf16_v3, tmp_path / "fp8", (32, 32))
    tensors = load_file(fp8 / "model.safetensors")
    del tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    save_file(tensors, fp8 / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError) as err:
        import_export(fp8, tmp_path / "export")
    message = str(err.value)
    assert "\n" not in message
    assert "model.layers.0.self_attn.o_proj.weight is torch.float8_e4m3fn" in message
    assert "model.layers.0.self_attn.o_proj.weight_scale_inv" in message
