"""What makes Mixtral Mixtral, each shown to matter: renormalised top-k routing, the expert layouts.

Ablations flip one setting of an otherwise exact conversion and check that transformers' logits are
then missed by far; the layout tests check that the choice follows the tensor names (not shapes)
and is refused when the saved setting is unknown.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _mixtral_layouts import fused_copy
from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids

TOY = {
    "model_type": "mixtral",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


@pytest.fixture(scope="module")
def mixtral(toy_model_factory):
    return toy_model_factory(ToyModel("MixtralForCausalLM", TOY))


def logits_with(folder, **settings) -> torch.Tensor:
    """Megatron logits of ``folder`` converted at TP=1, with provider ``settings`` overridden."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        return forward_logits(model, sample_ids(1000, seq=32), vocab_size=1000)
    finally:
        destroy_model_parallel()


def test_renormalised_top_k_routing_matters(mixtral):
    reference = hf_logits(mixtral, sample_ids(1000, seq=32))
    exact = max_abs_diff(logits_with(mixtral), reference)
    pre_softmax = max_abs_diff(logits_with(mixtral, moe_router_pre_softmax=True), reference)
    assert exact <= 1e-4
    assert pre_softmax > 1e-2, f"softmax-then-top-k without renormalisation moves logits by only {pre_softmax:.2g}"


def test_layout_follows_the_tensor_names(mixtral, tmp_path_factory):
    from safetensors import safe_open

    from bridge_mixtral.bridge import FUSED, PER_EXPERT, MixtralBridge, expert_layout

    with safe_open(str(mixtral / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert expert_layout(names) == PER_EXPERT
    fused = fused_copy(mixtral, tmp_path_factory.mktemp)
    with safe_open(str(fused / "model.safetensors"), "pt") as f:
        assert expert_layout(set(f.keys())) == FUSED

    bridge = MixtralBridge()
    config = SimpleNamespace()
    bridge.select_hf_layout(config, names)  # import: recorded on the provider
    assert config.hf_expert_layout == PER_EXPERT and bridge.layout == PER_EXPERT
    config.hf_expert_layout = FUSED
    bridge.select_hf_layout(config, None)  # export: what the provider recorded
    assert bridge.layout == FUSED
    config.hf_expert_layout = "stacked"
    with pytest.raises(ConfigError, match=r"hf_expert_layout='stacked'"):
        bridge.select_hf_layout(config, None)


def test_sliding_window_is_refused(mixtral, tmp_path):
    config = json.loads((mixtral / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "sliding_window": 64}))
    with pytest.raises(ConfigError, match=r"sliding_window=64"):
        AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()


def test_router_settings_translate_both_ways(mixtral, tmp_path):
    config = json.loads((mixtral / "config.json").read_text())
    (tmp_path / "config.json").write_text(
        json.dumps({**config, "router_jitter_noise": 0.1, "router_aux_loss_coef": 0.02})
    )
    bridge = AutoBridge.from_hf_pretrained(tmp_path)
    provider = bridge.to_megatron_provider()
    assert (provider.moe_input_jitter_eps, provider.moe_aux_loss_coeff) == (0.1, 0.02)
    assert (provider.moe_router_topk, provider.num_moe_experts, provider.moe_ffn_hidden_size) == (2, 4, 32)
    out = bridge.hf_config_for_export(provider)
    assert (out.router_jitter_noise, out.router_aux_loss_coef) == (0.1, 0.02)
    assert AutoBridge.from_hf_pretrained(mixtral).to_megatron_provider().moe_input_jitter_eps is None


def test_published_mixtral_8x7b_config_translates_both_ways():
    """Mixtral-8x7B-v0.1's config.json values (no weights): every key survives HF -> provider -> HF."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "mixtral",
        architectures=["MixtralForCausalLM"],
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        num_hidden_layers=32,
        intermediate_size=14336,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=32000,
        max_position_embeddings=32768,
        rope_theta=1e6,
        sliding_window=None,
        rms_norm_eps=1e-5,
        router_aux_loss_coef=0.02,
        dtype="bfloat16",
    )
    bridge = AutoBridge.from_hf_config(config)
    provider = bridge.to_megatron_provider()
    assert (provider.num_moe_experts, provider.moe_router_topk, provider.moe_ffn_hidden_size) == (8, 2, 14336)
    assert (provider.kv_channels, provider.num_query_groups, provider.rotary_base) == (128, 8, 1e6)
    assert provider.moe_router_pre_softmax is False and provider.params_dtype == torch.bfloat16
    source, regenerated = config.to_dict(), bridge.hf_config_for_export(provider).to_dict()
    assert {k: (v, regenerated.get(k)) for k, v in source.items() if regenerated.get(k) != v} == {}
