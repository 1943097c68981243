"""``bridgectl import`` / ``export`` on DeepSeek toys, and greedy generation against transformers.

What the export needs of the source (the MTP layers and their head copies, the fp32 router of a bf16
checkpoint, the expert layout) is recorded in the Megatron checkpoint's provider (run_config.json), so
the export - a separate process that sees only the checkpoint - writes the source back bit for bit.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from _deepseek_toys import V2_TOY, V3_TOY, with_expert_bias, with_mtp
from bridge_core import AutoBridge
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="deepseek")


def test_cli_roundtrip_keeps_mtp_layers_and_fp32_router_of_a_bf16_checkpoint(
    toy_model_factory, tmp_path_factory, tmp_path
):
    toy = ToyModel("DeepseekV3ForCausalLM", {**V3_TOY, "num_nextn_predict_layers": 1}, dtype="bfloat16", seed=6)
    source = with_mtp(
        with_expert_bias(toy_model_factory(toy), tmp_path_factory.mktemp), tmp_path / "src", head_copies=True
    )
    megatron, hf = tmp_path / "megatron", tmp_path / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron))
    assert proc.returncode == 0, proc.stderr
    provider = json.loads((megatron / "run_config.json").read_text())["provider"]
    assert (provider["mtp_num_layers"], provider["hf_mtp_head_copies"], provider["hf_router_dtype"]) == (
        1,
        True,
        "float32",
    )
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(source, hf) == []


@pytest.mark.parametrize(
    "toy", [ToyModel("DeepseekV3ForCausalLM", V3_TOY), ToyModel("DeepseekV2ForCausalLM", V2_TOY, seed=2)]
)
def test_greedy_generation_equals_transformers(toy_model_factory, tmp_path_factory, toy):
    from transformers import AutoModelForCausalLM

    folder = toy_model_factory(toy)
    if toy.model_type == "deepseek_v3":
        folder = with_expert_bias(folder, tmp_path_factory.mktemp)
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=12)
    assert expected.shape[1] == 22
    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider(load_weights=True)
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        eos = hf.generation_config.eos_token_id
        assert torch.equal(greedy_generate(model, ids, 12, eos_token_id=eos, use_cache=False), expected)
    finally:
        destroy_model_parallel()
