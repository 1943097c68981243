"""bridge-gpt-oss's training recipes: declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (openai/gpt-oss-20b, openai/gpt-oss-120b;
built from scratch, no download); SFT recipes train the HF folder passed with ``--hf-model``. Sizes
are Megatron-Bridge's (``recipes/gpt_oss/gpt_oss.py``): 20B at TP=1 PP=4 EP=2 (8 GPUs), 120B at
TP=1 PP=4 EP=8 (32 GPUs); expert tensor parallel size 1 (experts with biases). The core attention is
the provider's own (``attention.core_attention=local``: the sink attention; SDPA has no sinks).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "gpt_oss"


def _gpt_oss(layers: int, experts: int) -> dict[str, Any]:
    return {
        "model_type": "gpt_oss",
        "architecture": "GptOssForCausalLM",
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "head_dim": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "num_local_experts": experts,
        "num_experts_per_tok": 4,
        "router_aux_loss_coef": 0.9,
        "output_router_logits": False,
        "vocab_size": 201088,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
        "swiglu_limit": 7.0,
        "attention_bias": True,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "pad_token_id": 199999,
        "eos_token_id": 200002,
    }


MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt_oss_20b": ("GPT-OSS 20B (openai/gpt-oss-20b)", _gpt_oss(24, 32)),
    "gpt_oss_120b": ("GPT-OSS 120B (openai/gpt-oss-120b)", _gpt_oss(36, 128)),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "gpt_oss_20b": (8, {"pp": 4, "ep": 2}, {"global_batch_size": 512, "micro_batch_size": 1}),
    "gpt_oss_120b": (32, {"pp": 4, "ep": 8}, {"global_batch_size": 512, "micro_batch_size": 1}),
}
SFT: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "gpt_oss_20b": (8, {"pp": 4, "ep": 2}, {}),
    "gpt_oss_120b": (32, {"pp": 4, "ep": 8}, {}),
}


def _sink_attention(model: str, config: Any) -> None:
    config.attention = dataclasses.replace(config.attention, core_attention="local")


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT, adjust=_sink_attention)
