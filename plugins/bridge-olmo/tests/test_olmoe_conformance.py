"""bridge-olmo's OLMoE against bridge-core's conformance suite, both HF expert layouts.

Toys: 4 experts, top-2 without renormalisation (``norm_topk_prob=False``, OLMoE-1B-7B's), grouped-query
attention with the full-width QK-norm, every layer sparse; one saved per expert (transformers'
default on disk), one with stacked experts (``save_pretrained(save_original_format=False)``), one
with renormalised top-k (``norm_topk_prob=True``). Layouts (one torchrun launch): TP=2 (experts TP=2),
PP=2, EP=2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _olmo_helpers import fused_copy
from bridge_core.testing.conformance import BridgeConformance, ToyModel

TOY = {
    "model_type": "olmoe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": False,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "pad_token_id": 999,
    "eos_token_id": 998,  # OlmoeConfig's defaults (50279) lie outside the toy vocabulary
}
FUSED_TOYS = {"olmoe-fused"}


class TestOlmoeConformance(BridgeConformance):
    plugin = "olmo"
    toys_elsewhere = frozenset({"Olmo2ForCausalLM"})  # test_olmo2_conformance.py
    toys = {
        "olmoe": ToyModel("OlmoeForCausalLM", TOY, tags=("moe",)),
        "olmoe-fused": ToyModel("OlmoeForCausalLM", TOY, seed=1, tags=("moe",)),
        "olmoe-renormalised": ToyModel("OlmoeForCausalLM", {**TOY, "norm_topk_prob": True}, seed=2, tags=("moe",)),
    }

    @pytest.fixture
    def toy_folders(self, request: Any, tmp_path_factory: Any) -> dict[str, Path]:
        """The suite's toy folders, with the fused toys re-saved with stacked experts."""
        from bridge_core.testing.pytest_plugin import session_toy_factory

        factory = session_toy_factory(request.config, tmp_path_factory)
        folders = {name: factory(toy) for name, toy in self.checked_toys().items()}
        return {n: fused_copy(f, tmp_path_factory.mktemp) if n in FUSED_TOYS else f for n, f in folders.items()}
