"""A catalogue of tiny configs tests share (copy with ``{**TINY_LLAMA, ...}`` to vary one)."""

from __future__ import annotations

from typing import Any

# The tiny Llama of the training and SFT tests: 2 layers, hidden 64, grouped-query attention, untied.
TINY_LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
