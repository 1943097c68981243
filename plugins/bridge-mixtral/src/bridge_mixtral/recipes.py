"""bridge-mixtral's training recipes: declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. Megatron-Bridge ships no Mixtral recipes; the
sizes are NeMo 2.0's (8x7B: TP=1 PP=4 VPP=8 EP=8 on 64 GPUs; 8x22B: TP=2 PP=4 VPP=14 EP=8 on 128;
seq 4096, GBS 512 / MBS 1 for pretraining).
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "mixtral"


def _mixtral(hidden: int, ffn: int, layers: int, heads: int, vocab: int, positions: int, aux: float) -> dict[str, Any]:
    return {
        "model_type": "mixtral",
        "architecture": "MixtralForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "router_aux_loss_coef": aux,
        "output_router_logits": False,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral_8x7b": (
        "Mixtral 8x7B (mistralai/Mixtral-8x7B-v0.1)",
        _mixtral(4096, 14336, 32, 32, 32000, 32768, 0.02),
    ),
    "mixtral_8x22b": (
        "Mixtral 8x22B (mistralai/Mixtral-8x22B-v0.1)",
        _mixtral(6144, 16384, 56, 48, 32768, 65536, 0.001),
    ),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
_PRETRAIN = {"global_batch_size": 512, "micro_batch_size": 1}
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "mixtral_8x7b": (64, {"pp": 4, "vpp": 8, "ep": 8}, _PRETRAIN),
    "mixtral_8x22b": (128, {"tp": 2, "pp": 4, "vpp": 14, "ep": 8}, _PRETRAIN),
}
SFT: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "mixtral_8x7b": (64, {"pp": 4, "vpp": 8, "ep": 8}, {}),
    "mixtral_8x22b": (128, {"tp": 2, "pp": 4, "vpp": 14, "ep": 8}, {}),
}
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {}


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT, model_overrides=MODEL_OVERRIDES)
