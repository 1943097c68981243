"""bridge-phi against bridge-core's conformance suite (roundtrip, logits, TP=2 and PP=2 in one launch).

The toys exercise every Phi-3 feature: fused ``qkv_proj`` with grouped-query attention (Phi-3-medium's
layout; mini is the special case groups = heads), fused ``gate_up_proj``, ``partial_rotary_factor``
1.0 and 0.5, and a sliding window shorter than the sequence (8 < 64), as Phi-3-mini-4k's 2047.
"""

from __future__ import annotations

from bridge_core.testing.conformance import BridgeConformance, ToyModel

TOY = {
    "model_type": "phi3",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "original_max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 998,  # Phi3Config's defaults (32000) lie outside the toy vocabulary
    "pad_token_id": 999,
}


class TestPhiConformance(BridgeConformance):
    plugin = "phi"
    toys = {
        "phi3-window": ToyModel("Phi3ForCausalLM", {**TOY, "sliding_window": 8}),
        "phi3-partial-rotary": ToyModel("Phi3ForCausalLM", {**TOY, "partial_rotary_factor": 0.5, "sliding_window": 8}),
        "phi3-mha-tied-bf16": ToyModel(
            "Phi3ForCausalLM", {**TOY, "num_key_value_heads": 4, "tie_word_embeddings": True}, dtype="bfloat16"
        ),
    }
