"""bridge-phi's training recipes: declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. Megatron-Bridge ships no Phi-3 recipes: the
sizes are NeMo 2.0's Phi-3-mini one (TP=1) and, for medium, TP=2 (its 10 query groups allow 1, 2, 5 or
10) with PP=2. Phi-3.5-mini and the 128k variants are left out: they use ``longrope`` scaling, which
bridge-phi refuses (megatron-core's rotary embedding cannot switch between its short and long factors).
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "phi"


def _phi3(hidden: int, ffn: int, layers: int, heads: int, kv: int) -> dict[str, Any]:
    return {
        "model_type": "phi3",
        "architecture": "Phi3ForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": 32064,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "sliding_window": 2047,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
    }


MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "phi3_mini_4k": ("Phi-3-mini-4k (microsoft/Phi-3-mini-4k-instruct)", _phi3(3072, 8192, 32, 32, 32)),
    "phi3_medium_4k": ("Phi-3-medium-4k (microsoft/Phi-3-medium-4k-instruct)", _phi3(5120, 17920, 40, 40, 10)),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "phi3_mini_4k": (8, {}, {}),
    "phi3_medium_4k": (8, {"tp": 2, "pp": 2}, {}),
}
SFT = PRETRAIN
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {}


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT, model_overrides=MODEL_OVERRIDES)
