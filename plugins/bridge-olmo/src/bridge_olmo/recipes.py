"""bridge-olmo's training recipes (Megatron-Bridge names): declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. OLMoE-1B-7B follows Megatron-Bridge's
``olmoe_7b`` recipes (EP=8 on 8 GPUs, GBS 2048 / MBS 1, seq 4096, selective recompute); Megatron-Bridge
has no OLMo-2 recipes: they are sized as its Llama 3 ones of the same size (1B, 7B on TP=1; 13B on TP=2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bridge_core.training.config import TrainingConfig
from bridge_core.training.recipe_tables import define_recipes

FAMILY = "olmo"


def _olmo2(hidden: int, ffn: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "model_type": "olmo2",
        "architecture": "Olmo2ForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "vocab_size": 100352,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 500000.0,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": 100257,
        "pad_token_id": 100277,
    }


OLMOE = {
    "model_type": "olmoe",
    "architecture": "OlmoeForCausalLM",
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "norm_topk_prob": False,
    "router_aux_loss_coef": 0.01,
    "output_router_logits": False,
    "clip_qkv": None,
    "vocab_size": 50304,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "hidden_act": "silu",
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": 50279,
    "pad_token_id": 1,
}

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "olmo2_1b": ("OLMo-2 1B (allenai/OLMo-2-0425-1B)", _olmo2(2048, 8192, 16, 16)),
    "olmo2_7b": ("OLMo-2 7B (allenai/OLMo-2-1124-7B)", _olmo2(4096, 11008, 32, 32)),
    "olmo2_13b": ("OLMo-2 13B (allenai/OLMo-2-1124-13B)", _olmo2(5120, 13824, 40, 40)),
    "olmoe_7b": ("OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924)", OLMOE),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
_OLMOE_PRETRAIN = {"global_batch_size": 2048, "micro_batch_size": 1, "iters": 500_000, "eval_interval": 2000}
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "olmo2_1b": (8, {}, {}),
    "olmo2_7b": (8, {}, {}),
    "olmo2_13b": (8, {"tp": 2}, {}),
    "olmoe_7b": (8, {"ep": 8}, _OLMOE_PRETRAIN),
}
SFT: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    **PRETRAIN,
    "olmoe_7b": (8, {"ep": 8}, {"seq_length": 4096}),
}
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {}
RECOMPUTE = {"olmoe_7b": "selective"}  # Megatron-Bridge's olmoe_7b


def _recompute(model: str, config: TrainingConfig) -> None:
    config.recompute = dataclasses.replace(config.recompute, granularity=RECOMPUTE.get(model))


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT, model_overrides=MODEL_OVERRIDES, adjust=_recompute)
