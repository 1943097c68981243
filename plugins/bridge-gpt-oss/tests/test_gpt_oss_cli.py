"""``bridgectl import`` / ``export`` on GPT-OSS toys (bf16 experts and MXFP4 experts), and greedy
generation through the Megatron model against transformers' ``generate``."""

from __future__ import annotations

import subprocess

import pytest
import torch
from bridge_core import AutoBridge
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel
from gpt_oss_toys import GPT_OSS, mxfp4_copy, randomised_copy
from test_gpt_oss_mxfp4 import SQUARE, differences, transformers_model

NEW = 16


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="gpt_oss")


@pytest.fixture(scope="module")
def gpt_oss(toy_model_factory, tmp_path_factory):
    return randomised_copy(toy_model_factory(ToyModel("GptOssForCausalLM", GPT_OSS)), tmp_path_factory.mktemp)


def roundtrip(source, tmp_path):
    megatron, hf = tmp_path / "megatron", tmp_path / "hf"
    proc = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(megatron))
    assert proc.returncode == 0, proc.stderr
    proc = bridgectl("export", "--megatron-path", str(megatron), "--hf-path", str(hf))
    assert proc.returncode == 0, proc.stderr
    return hf


def test_import_export_roundtrip_is_bit_exact(gpt_oss, tmp_path):
    assert compare_hf_weights(gpt_oss, roundtrip(gpt_oss, tmp_path)) == []


def test_mxfp4_import_exports_transformers_dequantized_model(toy_model_factory, tmp_path_factory, tmp_path):
    base = toy_model_factory(ToyModel("GptOssForCausalLM", SQUARE, dtype="bfloat16"))
    source = mxfp4_copy(randomised_copy(base, tmp_path_factory.mktemp), tmp_path_factory.mktemp)
    exported = roundtrip(source, tmp_path)
    assert differences(exported, transformers_model(source, torch.bfloat16).state_dict()) == []


def test_greedy_generation_equals_transformers(gpt_oss):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(gpt_oss).eval()
    hf.generation_config.eos_token_id = None  # the toy reaches its eos id early: compare every position
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=NEW)
    assert expected.shape[1] == ids.shape[1] + NEW
    assert len(set(expected[0, ids.shape[1] :].tolist())) > 4, expected  # not a degenerate repetition
    assert ids.shape[1] + NEW > GPT_OSS["sliding_window"]  # the window binds while decoding
    provider = AutoBridge.from_hf_pretrained(gpt_oss).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=None), expected)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=None, use_cache=False), expected)
    finally:
        destroy_model_parallel()
