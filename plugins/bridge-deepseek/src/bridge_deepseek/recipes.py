"""bridge-deepseek's training recipes: declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT recipes
train the HF folder passed with ``--hf-model``. Sizes follow Megatron-Bridge's DeepSeek recipes:
V2-Lite TP=1 PP=1 EP=8 on 8 GPUs; V3 TP=2 PP=16 EP=64 (expert TP 1) on 1024 GPUs, its 61 layers split
4 + 14 x 4 + 1 (the MTP layer joins the last stage); seq 4096, MBS 1.
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "deepseek"

_YARN = {
    "rope_type": "yarn",
    "factor": 40.0,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "rope_theta": 10000.0,
}

DEEPSEEK_V2_LITE: dict[str, Any] = {
    "model_type": "deepseek_v2",
    "architecture": "DeepseekV2ForCausalLM",
    "vocab_size": 102400,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 27,
    "first_k_dense_replace": 1,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "num_experts_per_tok": 6,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "q_lora_rank": None,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {**_YARN, "mscale": 0.707, "mscale_all_dim": 0.707},
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 100000,
    "eos_token_id": 100001,
}

DEEPSEEK_V3: dict[str, Any] = {
    "model_type": "deepseek_v3",
    "architecture": "DeepseekV3ForCausalLM",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "first_k_dense_replace": 3,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {**_YARN, "mscale": 1.0, "mscale_all_dim": 1.0},
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
}

MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek_v2_lite": ("DeepSeek-V2-Lite (deepseek-ai/DeepSeek-V2-Lite)", DEEPSEEK_V2_LITE),
    "deepseek_v3": ("DeepSeek-V3 (deepseek-ai/DeepSeek-V3)", DEEPSEEK_V3),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "deepseek_v2_lite": (8, {"ep": 8}, {"global_batch_size": 512, "micro_batch_size": 1}),
    "deepseek_v3": (1024, {"tp": 2, "pp": 16, "ep": 64, "etp": 1}, {"global_batch_size": 4096, "micro_batch_size": 1}),
}
SFT: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "deepseek_v2_lite": (8, {"ep": 8}, {}),
    "deepseek_v3": (1024, {"tp": 2, "pp": 16, "ep": 64, "etp": 1}, {}),
}
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_v3": {"num_layers_in_first_pipeline_stage": 4, "num_layers_in_last_pipeline_stage": 1},
}


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
# LoRA on multi-latent attention: its up-projections and output projection, and the dense layers' MLPs
PEFT_TARGETS = ["linear_q_proj", "linear_q_up_proj", "linear_kv_up_proj", "linear_proj", "linear_fc1", "linear_fc2"]


def _peft_targets(model: str, config) -> None:
    if config.peft.scheme is not None:
        config.peft.targets = list(PEFT_TARGETS)


NAMES = define_recipes(
    globals(), FAMILY, MODELS, PRETRAIN, SFT, model_overrides=MODEL_OVERRIDES, adjust=_peft_targets
)
