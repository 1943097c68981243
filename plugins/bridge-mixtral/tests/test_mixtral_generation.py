"""Greedy generation through bridge-mixtral equals transformers' ``generate`` on the same weights (TP=1,
with the KV cache and by recomputation), for both HF expert layouts."""

from __future__ import annotations

import pytest
import torch
from _mixtral_layouts import fused_copy
from bridge_core import AutoBridge
from bridge_core.generation import greedy_generate
from bridge_core.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel
from test_mixtral_features import TOY

NEW = 16


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_greedy_generation_equals_transformers(toy_model_factory, tmp_path_factory, layout):
    from transformers import AutoModelForCausalLM

    folder = toy_model_factory(ToyModel("MixtralForCausalLM", TOY))
    if layout == "fused":
        folder = fused_copy(folder, tmp_path_factory.mktemp)
    ids = torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=NEW)
    eos = hf.generation_config.eos_token_id
    assert expected.shape[1] == ids.shape[1] + NEW  # the toy does not stop early at this prompt

    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos), expected)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos, use_cache=False), expected)
    finally:
        destroy_model_parallel()
