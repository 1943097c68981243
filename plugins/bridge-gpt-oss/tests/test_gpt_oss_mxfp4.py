"""MXFP4 sources: experts stored as ``*_blocks``/``*_scales``, dequantized on import, exported in bf16.

The reference is transformers' own dequantization (``convert_moe_packed_tensors``, and
``from_pretrained`` of the MXFP4 folder, which dequantizes on a CPU): the dequantized values bit for
bit, the export bit for bit against the dequantized model's tensors, the logits within 1e-4 (fp32)
at TP=1 here and at EP=2 and TP=2 in one torchrun launch. The toy has ``intermediate_size ==
hidden_size`` (as both released sizes do), where the bf16 ``down_proj [E, I, H]`` and the dequantized
``[E, H, I]`` have the same shape: only the format, read from the names, tells them apart.
"""

from __future__ import annotations

import json

import pytest
import torch
from bridge_core import AutoBridge
from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, sample_ids
from gpt_oss_toys import GPT_OSS, mxfp4_copy, randomised_copy

from bridge_gpt_oss.mxfp4 import dequantize_mxfp4

SQUARE = {**GPT_OSS, "intermediate_size": GPT_OSS["hidden_size"]}  # I == H: shapes cannot tell the formats apart


@pytest.fixture(scope="module")
def mxfp4(toy_model_factory, tmp_path_factory):
    base = toy_model_factory(ToyModel("GptOssForCausalLM", SQUARE, dtype="bfloat16"))
    return mxfp4_copy(randomised_copy(base, tmp_path_factory.mktemp), tmp_path_factory.mktemp)


def transformers_model(folder, dtype):
    """transformers' model of the MXFP4 folder (on a CPU it dequantizes the experts)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def differences(folder, reference: dict[str, torch.Tensor]) -> list[str]:
    """Every difference between the folder's tensors and ``reference`` (names, dtypes, bits)."""
    saved = SafetensorsCheckpoint(folder)
    problems = sorted(set(reference) ^ set(saved))
    for name in sorted(set(reference) & set(saved)):
        a, b = saved[name], reference[name]
        if (
            a.dtype != b.dtype
            or a.shape != b.shape
            or not torch.equal(a.view(torch.uint8), b.contiguous().view(torch.uint8))
        ):
            problems.append(f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
    return problems


def test_dequantization_equals_transformers_bit_for_bit(mxfp4):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 16, 4, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(0, 255, (3, 16, 4), dtype=torch.uint8, generator=gen)  # every E8M0 exponent but NaN
    pairs = [(blocks, scales)]
    saved = SafetensorsCheckpoint(mxfp4)
    for proj in ("gate_up_proj", "down_proj"):
        pairs.append(
            (saved[f"model.layers.0.mlp.experts.{proj}_blocks"], saved[f"model.layers.0.mlp.experts.{proj}_scales"])
        )
    saved.close()
    for b, s in pairs:
        mine = dequantize_mxfp4(b, s).transpose(1, 2)  # transformers returns the HF bf16 layout [E, in, out]
        theirs = convert_moe_packed_tensors(b, s)
        assert mine.dtype == theirs.dtype == torch.bfloat16
        assert torch.equal(mine.contiguous().view(torch.int16), theirs.view(torch.int16))


def test_import_matches_transformers_and_export_is_its_bf16_model(mxfp4, tmp_path):
    bridge = AutoBridge.from_hf_pretrained(mxfp4)
    provider = bridge.to_megatron_provider()
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        bridge.save_hf_pretrained(model, tmp_path / "bf16")
    finally:
        destroy_model_parallel()
    reference = transformers_model(mxfp4, torch.bfloat16).state_dict()
    assert differences(tmp_path / "bf16", reference) == []
    assert "quantization_config" not in json.loads((tmp_path / "bf16" / "config.json").read_text())

    ids = sample_ids(1000, seq=64)
    with torch.no_grad():
        expected = transformers_model(mxfp4, torch.float32)(ids).logits
    for folder in (mxfp4, tmp_path / "bf16"):  # the MXFP4 source, and its bf16 export read back
        bridge = AutoBridge.from_hf_pretrained(folder, torch_dtype=torch.float32)
        try:
            model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
            diff = max_abs_diff(forward_logits(model, ids, vocab_size=1000), expected)
        finally:
            destroy_model_parallel()
        print(f"{folder.name}: max |logits diff| {diff:.2g}")
        assert diff <= 1e-4, folder


def test_ep2_and_tp2_in_one_launch(mxfp4, cpu_launcher, tmp_path):
    ids = sample_ids(1000, seq=64)
    torch.save(ids, tmp_path / "ids.pt")
    layouts = {"ep2": {"ep": 2}, "tp2": {"tp": 2}}
    cases = [
        {
            "name": n,
            "hf_path": str(mxfp4),
            "ids": str(tmp_path / "ids.pt"),
            "out": str(tmp_path / n),
            "dtype": "float32",
            **s,
        }
        for n, s in layouts.items()
    ]
    results = cpu_launcher.run_cases(cases, tmp_path, env={"BRIDGE_PLUGINS": "gpt_oss", "BRIDGE_STRICT_PLUGINS": "1"})
    hf = transformers_model(mxfp4, torch.float32)
    with torch.no_grad():
        expected = hf(ids).logits
    reference = hf.state_dict()
    for name, result in results.items():
        assert result["error"] is None, result["error"]
        diff = max_abs_diff(torch.load(result["logits"], weights_only=True), expected)
        print(f"{name}: max |logits diff| {diff:.2g}")
        assert diff <= 1e-4, name
        assert differences(result["hf"], reference) == [], name
