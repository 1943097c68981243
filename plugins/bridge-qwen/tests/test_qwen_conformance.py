"""bridge-qwen against the core's conformance suite, plus Qwen-specific checks."""

from __future__ import annotations

import pytest

from bridge_core.testing.conformance import BridgeConformance, ToyModel

BASE = {
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
MOE = {
    **BASE,
    "model_type": "qwen3_moe",
    "head_dim": 24,
    "num_hidden_layers": 4,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "moe_intermediate_size": 48,
}


class TestQwenConformance(BridgeConformance):
    plugin = "qwen"
    toys_elsewhere = frozenset({"Qwen2MoeForCausalLM"})  # test_qwen2_moe_conformance.py
    toys = {
        "qwen2-tied": ToyModel("Qwen2ForCausalLM", {"model_type": "qwen2", **BASE, "tie_word_embeddings": True}),
        "qwen2-gqa3": ToyModel("Qwen2ForCausalLM", {"model_type": "qwen2", **BASE, "num_key_value_heads": 3}),
        "qwen3": ToyModel("Qwen3ForCausalLM", {"model_type": "qwen3", **BASE, "head_dim": 24}),
        "qwen3-bf16": ToyModel("Qwen3ForCausalLM", {"model_type": "qwen3", **BASE, "head_dim": 24}, dtype="bfloat16"),
        "qwen3moe-renorm": ToyModel(
            "Qwen3MoeForCausalLM", {**MOE, "norm_topk_prob": True, "mlp_only_layers": [1]}, tags=("moe",)
        ),
        "qwen3moe-softmax": ToyModel(
            "Qwen3MoeForCausalLM", {**MOE, "norm_topk_prob": False, "decoder_sparse_step": 2}, tags=("moe",)
        ),
    }


def test_moe_layer_pattern_follows_hf_conventions():
    from types import SimpleNamespace

    from bridge_qwen.qwen3_moe import hf_sparsity, moe_layer_pattern

    cfg = SimpleNamespace(num_hidden_layers=4, mlp_only_layers=[0], decoder_sparse_step=1)
    assert moe_layer_pattern(cfg) == [0, 1, 1, 1]
    cfg = SimpleNamespace(num_hidden_layers=4, mlp_only_layers=[], decoder_sparse_step=2)
    assert moe_layer_pattern(cfg) == [0, 1, 0, 1]
    assert hf_sparsity([0, 1, 0, 1]) == {"decoder_sparse_step": 2, "mlp_only_layers": []}
    assert hf_sparsity([1, 0, 1, 1]) == {"decoder_sparse_step": 1, "mlp_only_layers": [1]}


def test_expert_parallel_that_does_not_divide_experts_is_refused(toy_model_factory):
    from bridge_core import AutoBridge
    from bridge_core.errors import ConfigError

    folder = toy_model_factory(ToyModel("Qwen3MoeForCausalLM", {**MOE, "num_experts": 3}))
    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    provider.expert_model_parallel_size = 2
    with pytest.raises(ConfigError, match=r"expert parallel size 2 does not divide num_moe_experts=3"):
        provider.finalize()


def test_sliding_window_is_refused(toy_model_factory):
    from bridge_core import AutoBridge
    from bridge_core.errors import ConfigError

    folder = toy_model_factory(
        ToyModel("Qwen2ForCausalLM", {"model_type": "qwen2", **BASE, "use_sliding_window": True, "sliding_window": 64})
    )
    with pytest.raises(ConfigError, match=r"use_sliding_window=True"):
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
