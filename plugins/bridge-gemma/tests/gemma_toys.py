"""Tiny Gemma configs shared by the tests: every special feature binds (window < sequence, small caps)."""

GEMMA = {
    "model_type": "gemma",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # heads x head_dim = 128 != hidden, as Gemma 7B (16 x 256 != 3072)
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
GEMMA2 = {
    **GEMMA,
    "model_type": "gemma2",
    "query_pre_attn_scalar": 24,
    "attn_logit_softcapping": 0.5,  # the published 50 / 30 move toy logits ~1e-7: small caps bind
    "final_logit_softcapping": 3.0,
    "sliding_window": 8,
}
GEMMA3 = {
    **GEMMA,
    "model_type": "gemma3_text",
    "num_hidden_layers": 4,
    "query_pre_attn_scalar": 24,
    "sliding_window": 8,
    "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
    },
}
