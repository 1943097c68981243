"""bridge-qwen's training recipes (Megatron-Bridge names): declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. Parallel sizes are Megatron-Bridge's (qwen2,
qwen3, qwen3_moe recipes), context parallelism dropped (it needs Transformer Engine). Not in
Megatron-Bridge, sized here: Qwen2.5-3B (as Qwen3-4B), Qwen1.5-MoE-A2.7B (EP=4: 60 experts) and
Qwen2-57B-A14B (TP=4 PP=4 EP=8 on 32 GPUs).
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "qwen"
_QWEN = {"rope_theta": 1000000.0, "rope_scaling": None, "hidden_act": "silu", "bos_token_id": 151643}


def _qwen3(hidden: int, ffn: int, layers: int, heads: int, tied: bool) -> dict[str, Any]:
    return {
        **_QWEN,
        "model_type": "qwen3",
        "architecture": "Qwen3ForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "eos_token_id": 151645,
    }


def _qwen25(hidden: int, ffn: int, layers: int, heads: int, kv: int, vocab: int, positions: int, eps: float) -> dict:
    return {
        **_QWEN,
        "model_type": "qwen2",
        "architecture": "Qwen2ForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "rms_norm_eps": eps,
        "tie_word_embeddings": vocab == 151936,  # 0.5B, 1.5B, 3B tie; 7B and up have 152064 and do not
        "use_sliding_window": False,
        "sliding_window": positions,
        "eos_token_id": 151643,
    }


def _qwen2_moe(hidden: int, layers: int, heads: int, kv: int, experts: int, topk: int, moe: int, shared: int) -> dict:
    """Qwen1.5-MoE / Qwen2-MoE: every layer sparse, a shared expert with a sigmoid gate, no top-k renormalisation."""
    return {
        **_qwen25(hidden, shared, layers, heads, kv, 151936, 8192, 1e-6),
        "model_type": "qwen2_moe",
        "architecture": "Qwen2MoeForCausalLM",
        "tie_word_embeddings": False,
        "num_experts": experts,
        "num_experts_per_tok": topk,
        "moe_intermediate_size": moe,
        "shared_expert_intermediate_size": shared,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "router_aux_loss_coef": 0.001,
        "output_router_logits": False,
    }


def _qwen3_moe(hidden: int, ffn: int, layers: int, heads: int, moe: int) -> dict[str, Any]:
    return {
        **_qwen3(hidden, ffn, layers, heads, False),
        "model_type": "qwen3_moe",
        "architecture": "Qwen3MoeForCausalLM",
        "num_key_value_heads": 4,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "moe_intermediate_size": moe,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "router_aux_loss_coef": 0.001,
        "output_router_logits": False,
        "use_sliding_window": False,
        "sliding_window": None,
    }


MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen25_500m": ("Qwen2.5 0.5B (Qwen/Qwen2.5-0.5B)", _qwen25(896, 4864, 24, 14, 2, 151936, 32768, 1e-6)),
    "qwen25_1p5b": ("Qwen2.5 1.5B (Qwen/Qwen2.5-1.5B)", _qwen25(1536, 8960, 28, 12, 2, 151936, 131072, 1e-6)),
    "qwen25_3b": ("Qwen2.5 3B (Qwen/Qwen2.5-3B)", _qwen25(2048, 11008, 36, 16, 2, 151936, 32768, 1e-6)),
    "qwen25_7b": ("Qwen2.5 7B (Qwen/Qwen2.5-7B)", _qwen25(3584, 18944, 28, 28, 4, 152064, 131072, 1e-6)),
    "qwen25_14b": ("Qwen2.5 14B (Qwen/Qwen2.5-14B)", _qwen25(5120, 13824, 48, 40, 8, 152064, 131072, 1e-5)),
    "qwen25_32b": ("Qwen2.5 32B (Qwen/Qwen2.5-32B)", _qwen25(5120, 27648, 64, 40, 8, 152064, 131072, 1e-5)),
    "qwen25_72b": ("Qwen2.5 72B (Qwen/Qwen2.5-72B)", _qwen25(8192, 29568, 80, 64, 8, 152064, 131072, 1e-5)),
    "qwen3_600m": ("Qwen3 0.6B (Qwen/Qwen3-0.6B)", _qwen3(1024, 3072, 28, 16, True)),
    "qwen3_1p7b": ("Qwen3 1.7B (Qwen/Qwen3-1.7B)", _qwen3(2048, 6144, 28, 16, True)),
    "qwen3_4b": ("Qwen3 4B (Qwen/Qwen3-4B)", _qwen3(2560, 9728, 36, 32, True)),
    "qwen3_8b": ("Qwen3 8B (Qwen/Qwen3-8B)", _qwen3(4096, 12288, 36, 32, False)),
    "qwen3_14b": ("Qwen3 14B (Qwen/Qwen3-14B)", _qwen3(5120, 17408, 40, 40, False)),
    "qwen3_32b": ("Qwen3 32B (Qwen/Qwen3-32B)", _qwen3(5120, 25600, 64, 64, False)),
    "qwen15_moe_a2p7b": (
        "Qwen1.5-MoE-A2.7B (Qwen/Qwen1.5-MoE-A2.7B)",
        _qwen2_moe(2048, 24, 16, 16, 60, 4, 1408, 5632),
    ),
    "qwen2_57b_a14b": (
        "Qwen2-57B-A14B (Qwen/Qwen2-57B-A14B)",
        {
            **_qwen2_moe(3584, 28, 28, 4, 64, 8, 2560, 20480),
            "intermediate_size": 18944,
            "max_position_embeddings": 32768,
        },
    ),
    "qwen3_30b_a3b": ("Qwen3-30B-A3B (Qwen/Qwen3-30B-A3B)", _qwen3_moe(2048, 6144, 48, 32, 768)),
    "qwen3_235b_a22b": ("Qwen3-235B-A22B (Qwen/Qwen3-235B-A22B)", _qwen3_moe(4096, 12288, 94, 64, 1536)),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
_MOE_SFT = {"global_batch_size": 32, "micro_batch_size": 1}
_A3B = {"tp": 4, "pp": 2, "ep": 4, "etp": 1, "sequence_parallel": True}
PRETRAIN: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    "qwen25_500m": (1, {}, {}),
    "qwen25_1p5b": (1, {}, {}),
    "qwen25_3b": (2, {"tp": 2}, {}),
    "qwen25_7b": (2, {"tp": 2}, {}),
    "qwen25_14b": (4, {"tp": 4}, {}),
    "qwen25_32b": (16, {"tp": 8, "pp": 2}, {}),
    "qwen25_72b": (32, {"tp": 8, "pp": 4}, {}),
    "qwen3_600m": (1, {}, {}),
    "qwen3_1p7b": (1, {}, {}),
    "qwen3_4b": (2, {"tp": 2}, {}),
    "qwen3_8b": (4, {"tp": 4}, {}),
    "qwen3_14b": (8, {"tp": 8}, {}),
    "qwen3_32b": (16, {"tp": 8, "pp": 2}, {}),
    "qwen15_moe_a2p7b": (8, {"ep": 4}, {}),
    "qwen2_57b_a14b": (32, {"tp": 4, "pp": 4, "ep": 8, "etp": 1, "sequence_parallel": True}, {}),
    "qwen3_30b_a3b": (8, _A3B, {}),
    # Megatron-Bridge: CP=2 on 256 GPUs; without CP the same GPUs give DP=4
    "qwen3_235b_a22b": (
        256,
        {"tp": 4, "pp": 16, "ep": 8, "etp": 1, "sequence_parallel": True},
        {"micro_batch_size": 1},
    ),
}
SFT: dict[str, tuple[int, dict[str, Any], dict[str, Any]]] = {
    **{model: (gpus, parallel, {}) for model, (gpus, parallel, _) in PRETRAIN.items()},
    "qwen15_moe_a2p7b": (8, {"ep": 4}, _MOE_SFT),
    "qwen2_57b_a14b": (32, {"tp": 4, "pp": 4, "ep": 8, "etp": 1, "sequence_parallel": True}, _MOE_SFT),
    "qwen3_30b_a3b": (8, _A3B, _MOE_SFT),
    "qwen3_235b_a22b": (64, {"tp": 4, "pp": 16, "ep": 4, "etp": 1, "sequence_parallel": True}, _MOE_SFT),
}
# Megatron-Bridge's qwen3 recipes initialise with std 0.02. Qwen3-235B-A22B's 94 layers over PP=16:
# Megatron-Bridge counts the embedding and the loss as a layer each (6 per stage); the same split in
# layers: 5 on the first and the last stage, 6 on each of the 14 others.
_PIPELINE_SPLIT = {"num_layers_in_first_pipeline_stage": 5, "num_layers_in_last_pipeline_stage": 5}
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    **{model: {"init_method_std": 0.02} for model in MODELS if model.startswith("qwen3_")},
    "qwen3_235b_a22b": {"init_method_std": 0.02, **_PIPELINE_SPLIT},
}


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT, model_overrides=MODEL_OVERRIDES)
