"""bridge-gemma's training recipes (Megatron-Bridge names): declarative, network-free, torch-free.

Pretrain recipes carry the published config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. Parallel sizes: Megatron-Bridge's gemma2 /
gemma3 recipes (Gemma 3 4B/12B/27B: its gemma3_vl SFT sizes); Gemma 1 has none there (NeMo 2.0's:
2B on TP=1, 7B on TP=2).

Gemma 3 4B/12B/27B are published as ``Gemma3ForConditionalGeneration`` (text + vision); bridge-gemma
converts the text model, ``Gemma3ForCausalLM`` (``gemma3_text``), so these recipes are for the text
model: its ``text_config`` values, and ``--hf-model`` must be a ``Gemma3ForCausalLM`` folder.
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.recipe_tables import define_recipes

FAMILY = "gemma"


def _gemma(hidden: int, ffn: int, layers: int, heads: int, kv: int) -> dict[str, Any]:
    return {
        "model_type": "gemma",
        "architecture": "GemmaForCausalLM",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 256,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "gelu",  # as published; transformers (and the bridge) read it as the tanh GELU
        "tie_word_embeddings": True,
        "attention_bias": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }


def _gemma2(hidden: int, ffn: int, layers: int, heads: int, kv: int, head_dim: int, scalar: int) -> dict[str, Any]:
    return {
        **_gemma(hidden, ffn, layers, heads, kv),
        "model_type": "gemma2",
        "architecture": "Gemma2ForCausalLM",
        "head_dim": head_dim,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": scalar,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    }


def _gemma3(hidden: int, ffn: int, layers: int, heads: int, kv: int, head_dim: int, scalar: int) -> dict[str, Any]:
    """Gemma 3 text (4B/12B/27B: ``text_config``): 5 local (window 1024, base 1e4) : 1 global layers
    (base 1e6, linear scaling x8), 128k positions."""
    return {
        **_gemma2(hidden, ffn, layers, heads, kv, head_dim, scalar),
        "model_type": "gemma3_text",
        "architecture": "Gemma3ForCausalLM",
        "vocab_size": 262208,
        "max_position_embeddings": 131072,
        "sliding_window": 1024,
        # the published sliding_window_pattern=6 as transformers 5 spells it
        "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "eos_token_id": 1,
    }


MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma_2b": ("Gemma 2B (google/gemma-2b)", _gemma(2048, 16384, 18, 8, 1)),
    "gemma_7b": ("Gemma 7B (google/gemma-7b)", _gemma(3072, 24576, 28, 16, 16)),
    "gemma2_2b": ("Gemma 2 2B (google/gemma-2-2b)", _gemma2(2304, 9216, 26, 8, 4, 256, 256)),
    "gemma2_9b": ("Gemma 2 9B (google/gemma-2-9b)", _gemma2(3584, 14336, 42, 16, 8, 256, 256)),
    "gemma2_27b": ("Gemma 2 27B (google/gemma-2-27b)", _gemma2(4608, 36864, 46, 32, 16, 128, 144)),
    "gemma3_1b": (
        "Gemma 3 1B (google/gemma-3-1b-pt)",
        {
            **_gemma3(1152, 6912, 26, 4, 1, 256, 256),
            "vocab_size": 262144,
            "max_position_embeddings": 32768,
            "sliding_window": 512,
            "rope_scaling": None,
        },
    ),
    "gemma3_4b": ("Gemma 3 4B text (google/gemma-3-4b-pt)", _gemma3(2560, 10240, 34, 8, 4, 256, 256)),
    "gemma3_12b": ("Gemma 3 12B text (google/gemma-3-12b-pt)", _gemma3(3840, 15360, 48, 16, 8, 256, 256)),
    "gemma3_27b": ("Gemma 3 27B text (google/gemma-3-27b-pt)", _gemma3(5376, 21504, 62, 32, 16, 128, 168)),
}

# model -> (GPUs, parallel sizes, train-loop values) for pretraining and for SFT
_GEMMA3_SFT = {"seq_length": 4096, "global_batch_size": 32, "micro_batch_size": 1}
PRETRAIN: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {
    "gemma_2b": (8, {}, {}),
    "gemma_7b": (8, {"tp": 2}, {}),
    "gemma2_2b": (2, {"tp": 2}, {}),
    "gemma2_9b": (8, {"tp": 8}, {}),
    "gemma2_27b": (16, {"tp": 8, "pp": 2}, {}),
    "gemma3_1b": (1, {}, {"seq_length": 32768, "global_batch_size": 512, "micro_batch_size": 1}),
    "gemma3_4b": (1, {}, {}),
    "gemma3_12b": (4, {"tp": 4}, {}),
    "gemma3_27b": (16, {"tp": 8, "pp": 2}, {}),
}
SFT: dict[str, tuple[int, dict[str, int], dict[str, int]]] = {
    "gemma_2b": (1, {}, {}),
    "gemma_7b": (8, {"tp": 2}, {}),
    "gemma2_2b": (1, {}, {}),
    "gemma2_9b": (4, {"tp": 4}, {}),
    "gemma2_27b": (16, {"tp": 8, "pp": 2}, {}),
    "gemma3_1b": (1, {}, _GEMMA3_SFT),
    "gemma3_4b": (1, {}, _GEMMA3_SFT),
    "gemma3_12b": (4, {"tp": 4}, _GEMMA3_SFT),
    "gemma3_27b": (16, {"tp": 8, "pp": 2}, _GEMMA3_SFT),
}


# One zero-argument function per recipe, named as the recipe (the targets plugin.py registers).
NAMES = define_recipes(globals(), FAMILY, MODELS, PRETRAIN, SFT)
