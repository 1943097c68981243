"""Qwen2-MoE (bridge-qwen) against the conformance suite: both HF expert layouts, every parallel layout.

Toys: 4 experts top-2, a shared expert with its sigmoid gate (random, nonzero weights), q/k/v biases;
softmax without renormalisation (``norm_topk_prob=False``, the released models' setting) with every
layer sparse; renormalised with a dense first layer (``mlp_only_layers=[0]``) saved with stacked
experts; every other layer sparse (``decoder_sparse_step=2``) in bf16. Layouts (one torchrun launch):
TP=2 (experts TP=2 too), PP=2, EP=2, TP=2 with expert TP=1, TP=2 x EP=2 with expert TP=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _qwen2_moe_layouts import fused_copy

from bridge_core.testing.conformance import BridgeConformance, ToyModel

TOY = {
    "model_type": "qwen2_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 48,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "router_aux_loss_coef": 0.01,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
FUSED_TOYS = {"qwen2moe-renorm-dense0-fused"}


class TestQwen2MoeConformance(BridgeConformance):
    plugin = "qwen"
    toys_elsewhere = frozenset(
        {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"}
    )  # test_qwen_conformance.py
    toys = {
        "qwen2moe-softmax": ToyModel("Qwen2MoeForCausalLM", {**TOY, "norm_topk_prob": False}, tags=("moe",)),
        "qwen2moe-renorm-dense0-fused": ToyModel(
            "Qwen2MoeForCausalLM", {**TOY, "norm_topk_prob": True, "mlp_only_layers": [0]}, tags=("moe",)
        ),
        "qwen2moe-step2-bf16": ToyModel(
            "Qwen2MoeForCausalLM", {**TOY, "decoder_sparse_step": 2}, dtype="bfloat16", tags=("moe",)
        ),
    }
    parallel = {
        **BridgeConformance.parallel,
        "tp2etp1": {"tp": 2, "etp": 1, "requires": "moe"},
        "tp2ep2": {"tp": 2, "ep": 2, "etp": 1, "requires": "moe"},
    }

    @pytest.fixture
    def toy_folders(self, request: Any, tmp_path_factory: Any) -> dict[str, Path]:
        """The suite's toy folders, with the fused toys re-saved with stacked experts."""
        from bridge_core.testing.pytest_plugin import session_toy_factory

        factory = session_toy_factory(request.config, tmp_path_factory)
        folders = {name: factory(toy) for name, toy in self.checked_toys().items()}
        return {n: fused_copy(f, tmp_path_factory.mktemp) if n in FUSED_TOYS else f for n, f in folders.items()}
