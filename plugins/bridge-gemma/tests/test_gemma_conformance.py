"""bridge-gemma against bridge-core's conformance suite (roundtrip, logits, TP=2 and PP=2 in one launch).

The toys exercise every feature: zero-centred norms, embeddings x sqrt(hidden) (in bf16 rounded to
the weight dtype), tied embeddings, GeGLU-tanh, head_dim x heads != hidden, grouped-query attention;
Gemma 2 adds sandwich norms, query_pre_attn_scalar, binding soft-caps and a window (8) shorter than
the sequence (64) on alternate layers; Gemma 3 per-head zero-centred QK-norms, windowed and global
layers from ``layer_types`` with their two RoPE bases (the global one with linear scaling x8).
"""

from __future__ import annotations

from gemma_toys import GEMMA, GEMMA2, GEMMA3

from bridge_core.testing.conformance import BridgeConformance, ToyModel


class TestGemmaConformance(BridgeConformance):
    plugin = "gemma"
    toys = {
        "gemma": ToyModel("GemmaForCausalLM", GEMMA),
        "gemma-mha-bf16": ToyModel("GemmaForCausalLM", {**GEMMA, "num_key_value_heads": 4}, dtype="bfloat16"),
        "gemma2": ToyModel("Gemma2ForCausalLM", GEMMA2),
        "gemma3": ToyModel("Gemma3ForCausalLM", GEMMA3),
    }
