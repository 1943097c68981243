"""Core-only upgrade: a plugin frozen at contract 1.0 keeps loading and converting exactly."""

from __future__ import annotations

from bridge_core.testing.conformance import BridgeConformance, ToyModel

CONFIG = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


class TestFrozenV1(BridgeConformance):
    plugin = "frozen-v1"
    toys = {
        "frozen": ToyModel("FrozenLlamaForCausalLM", CONFIG),
        "frozen-tied": ToyModel("FrozenLlamaForCausalLM", {**CONFIG, "tie_word_embeddings": True}),
    }
    parallel = {"tp2": {"tp": 2}, "pp2": {"pp": 2}}
