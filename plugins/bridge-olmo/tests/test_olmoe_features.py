"""OLMoE's features each matter, the expert layout follows the tensor names, ``clip_qkv`` is refused,
greedy generation equals transformers' (TP=1 in process; TP=2 and EP=2 in one torchrun launch).

Ablations: routing renormalised over the top k (``moe_router_pre_softmax=False``, Mixtral's), the
full-width QK-norm replaced by a per-head one, and at TP=2 a norm over each rank's own heads only.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _olmo_helpers import fused_copy, hf_greedy, launch, logits_diff, prompt
from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel
from test_olmo2_features import per_head_qk_norm
from test_olmoe_conformance import TOY

NEW = 16


@pytest.fixture(scope="module")
def olmoe(toy_model_factory):
    return toy_model_factory(ToyModel("OlmoeForCausalLM", TOY))


def test_exact_and_each_feature_matters(olmoe):
    assert logits_diff(olmoe) <= 1e-4
    renormalised = logits_diff(olmoe, moe_router_pre_softmax=False)
    assert renormalised > 1e-2, f"renormalised top-k routing moves logits by only {renormalised:.2g}"
    per_head = logits_diff(olmoe, per_head_qk_norm)
    assert per_head > 1e-2, f"a per-head QK-norm moves logits by only {per_head:.2g}"


def test_routing_setting_translates_both_ways(olmoe):
    bridge = AutoBridge.from_hf_pretrained(olmoe)
    provider = bridge.to_megatron_provider()
    assert (provider.moe_router_pre_softmax, provider.moe_router_topk, provider.num_moe_experts) == (True, 2, 4)
    out = bridge.hf_config_for_export(provider)
    assert (out.norm_topk_prob, out.clip_qkv, out.num_experts) == (False, None, 4)


def test_layout_follows_the_tensor_names(olmoe, tmp_path_factory):
    from safetensors import safe_open

    from bridge_olmo.olmoe import FUSED, PER_EXPERT, OlmoeBridge, expert_layout

    fused = fused_copy(olmoe, tmp_path_factory.mktemp)
    bridge = OlmoeBridge()
    for folder, layout in ((olmoe, PER_EXPERT), (fused, FUSED)):
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            names = set(f.keys())
        assert expert_layout(names) == layout
        config = SimpleNamespace()
        bridge.select_hf_layout(config, names)  # import: recorded on the model's config
        assert config.hf_expert_layout == layout and bridge.layout == layout
    config.hf_expert_layout = "stacked"
    with pytest.raises(ConfigError, match=r"hf_expert_layout='stacked'"):
        bridge.select_hf_layout(config, None)  # export: what the checkpoint recorded


def test_clip_qkv_is_refused(olmoe, tmp_path):
    config = json.loads((olmoe / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "clip_qkv": 8.0}))
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()
    assert "clip_qkv=8.0" in str(err.value) and "\n" not in str(err.value)


def test_greedy_generation_equals_transformers(olmoe):
    ids = prompt()
    expected, eos = hf_greedy(olmoe, ids, NEW)
    provider = AutoBridge.from_hf_pretrained(olmoe).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos), expected)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos, use_cache=False), expected)
    finally:
        destroy_model_parallel()


def test_tp2_needs_the_norm_across_ranks_and_tp2_ep2_generate(olmoe, tmp_path):
    expected, eos = hf_greedy(olmoe, prompt(), NEW)
    cases = [
        {"name": "tp2-per-shard", "tp": 2, "mode": "logits", "per_shard_norm": True},
        {"name": "tp2", "tp": 2},
        {"name": "ep2", "ep": 2},
    ]
    results = launch(olmoe, cases, tmp_path, NEW, eos)
    assert min(results["tp2-per-shard"]) > 1e-2, f"a per-shard norm at TP=2 moves logits by {results['tp2-per-shard']}"
    want = expected[0].tolist()
    assert results["tp2"] == [want, want] and results["ep2"] == [want, want]


def test_olmoe_1b_7b_shaped_config_translates_both_ways():
    """An OLMoE-1B-7B-shaped config.json (no weights): every key survives HF -> provider -> HF."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "olmoe",
        architectures=["OlmoeForCausalLM"],
        hidden_size=2048,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_hidden_layers=16,
        intermediate_size=1024,
        num_experts=64,
        num_experts_per_tok=8,
        vocab_size=50304,
        max_position_embeddings=4096,
        router_aux_loss_coef=0.01,
        dtype="float32",
    )
    bridge = AutoBridge.from_hf_config(config)
    provider = bridge.to_megatron_provider()
    assert (provider.num_moe_experts, provider.moe_router_topk, provider.moe_ffn_hidden_size) == (64, 8, 1024)
    assert provider.moe_router_pre_softmax is True and provider.kv_channels == 128
    source, regenerated = config.to_dict(), bridge.hf_config_for_export(provider).to_dict()
    assert {k: (v, regenerated.get(k)) for k, v in source.items() if regenerated.get(k) != v} == {}
