"""bridge-olmo's OLMo-2 against bridge-core's conformance suite (roundtrip, logits, TP=2 and PP=2 in one launch).

The toys exercise both OLMo-2 features: post-norm layers and the full-width QK-norm with grouped-query
attention (TP=2 splits the heads, so the norm must sum squares across ranks), and a bf16 toy with tied
embeddings. Norm weights are randomised by the toy builder's seed, so a misplaced norm cannot hide.
"""

from __future__ import annotations

from bridge_core.testing.conformance import BridgeConformance, ToyModel

TOY = {
    "model_type": "olmo2",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "pad_token_id": 999,
    "eos_token_id": 998,  # Olmo2Config's defaults (50279) lie outside the toy vocabulary
}


class TestOlmo2Conformance(BridgeConformance):
    plugin = "olmo"
    toys_elsewhere = frozenset({"OlmoeForCausalLM"})  # test_olmoe_conformance.py
    toys = {
        "olmo2": ToyModel("Olmo2ForCausalLM", TOY),
        "olmo2-tied-bf16": ToyModel("Olmo2ForCausalLM", {**TOY, "tie_word_embeddings": True}, dtype="bfloat16"),
    }
