"""bridge-mixtral against bridge-core's conformance suite, both HF expert layouts, every parallel layout.

Toys: 4 experts, top-2, every layer sparse; one saved per expert (transformers' default on disk), one
with stacked experts (its in-memory layout, ``save_original_format=False``), one bf16 with tied
embeddings. Layouts (one torchrun launch): TP=2 (experts TP=2 too), PP=2, EP=2, TP=2 with expert
TP=1, TP=2 x EP=2 with expert TP=1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _mixtral_layouts import fused_copy
from bridge_core.testing.conformance import BridgeConformance, ToyModel

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
    "router_aux_loss_coef": 0.02,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
FUSED_TOYS = {"mixtral-fused"}


class TestMixtralConformance(BridgeConformance):
    plugin = "mixtral"
    toys = {
        "mixtral": ToyModel("MixtralForCausalLM", TOY, tags=("moe",)),
        "mixtral-fused": ToyModel("MixtralForCausalLM", TOY, seed=1, tags=("moe",)),
        "mixtral-tied-bf16": ToyModel(
            "MixtralForCausalLM", {**TOY, "tie_word_embeddings": True}, dtype="bfloat16", tags=("moe",)
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
