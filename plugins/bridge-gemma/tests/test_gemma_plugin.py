"""bridge-gemma's registration, and its norm module against transformers' ``GemmaRMSNorm``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bridge_core.plugins.discovery import discover


def test_registers_gemma_1_2_3():
    registry = discover(environ={"BRIDGE_PLUGINS": "gemma", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-gemma", "loaded")
    assert sorted(record.architectures) == ["Gemma2ForCausalLM", "Gemma3ForCausalLM", "GemmaForCausalLM"]
    assert registry.bridge_for("Gemma2ForCausalLM").bridge == "bridge_gemma.bridge:Gemma2Bridge"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_equals_transformers_bit_for_bit(dtype):
    from bridge_gemma.modeling_gemma.norm import GemmaRMSNorm
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm as HFNorm

    config = SimpleNamespace(layernorm_zero_centered_gamma=True, params_dtype=dtype, sequence_parallel=False)
    ours, theirs = GemmaRMSNorm(config, 48, eps=1e-6), HFNorm(48, eps=1e-6).to(dtype)
    weight = torch.randn(48).to(dtype)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
    x = torch.randn(5, 3, 48).to(dtype)
    assert torch.equal(ours(x), theirs(x))
