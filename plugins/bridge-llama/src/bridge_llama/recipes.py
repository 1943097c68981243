"""bridge-llama's training recipes (Megatron-Bridge names): declarative, network-free, torch-free.

Pretrain recipes carry the model's config.json values (the model is built from scratch, no
download); SFT recipes train the HF folder passed with ``--hf-model``. Parallel sizes follow
Megatron-Bridge's recipes where they run without Transformer Engine (no context parallelism).
"""

from __future__ import annotations

import dataclasses

from bridge_core.training.defaults import peft_config, pretrain_config, sft_config
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor

ARCH = "LlamaForCausalLM"
MISTRAL_ARCH = "MistralForCausalLM"
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama3(hidden: int, ffn: int, layers: int, heads: int, tied: bool, rope_factor: float, head_dim: int) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": head_dim,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": rope_factor},
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
    }


def _smollm2(hidden: int, ffn: int, layers: int, heads: int, kv: int, theta: float) -> dict:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": theta,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


# Mistral 7B v0.1: a 4096-token sliding window on every layer (exact, bridge_core.modeling's SDPA attention)
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

MODELS = {
    "llama32_1b": _llama3(2048, 8192, 16, 32, True, 32.0, 64),
    "llama32_3b": _llama3(3072, 8192, 28, 24, True, 32.0, 128),
    "llama31_8b": _llama3(4096, 14336, 32, 32, False, 8.0, 128),
    "llama31_70b": _llama3(8192, 28672, 80, 64, False, 8.0, 128),
    "smollm2_135m": _smollm2(576, 1536, 30, 9, 3, 100000.0),
    "smollm2_360m": _smollm2(960, 2560, 32, 15, 5, 100000.0),
    "smollm2_1p7b": _smollm2(2048, 8192, 24, 32, 32, 130000.0),
    "mistral_7b": MISTRAL_7B,
}
TITLES = {
    "llama32_1b": "Llama 3.2 1B (meta-llama/Llama-3.2-1B)",
    "llama32_3b": "Llama 3.2 3B (meta-llama/Llama-3.2-3B)",
    "llama31_8b": "Llama 3.1 8B (meta-llama/Llama-3.1-8B)",
    "llama31_70b": "Llama 3.1 70B (meta-llama/Llama-3.1-70B)",
    "smollm2_135m": "SmolLM2 135M (HuggingFaceTB/SmolLM2-135M)",
    "smollm2_360m": "SmolLM2 360M (HuggingFaceTB/SmolLM2-360M)",
    "smollm2_1p7b": "SmolLM2 1.7B (HuggingFaceTB/SmolLM2-1.7B)",
    "mistral_7b": "Mistral 7B v0.1 (mistralai/Mistral-7B-v0.1)",
}

# model -> (GPUs, parallel sizes) it was sized for; Megatron-Bridge's llama3 recipes, CP dropped (needs TE)
SIZES = {
    "llama32_1b": (8, {}),
    "llama32_3b": (8, {}),
    "llama31_8b": (8, {}),
    "llama31_70b": (64, {"tp": 4, "pp": 4, "vpp": 5}),
    "smollm2_135m": (1, {}),
    "smollm2_360m": (1, {}),
    "smollm2_1p7b": (8, {}),
    "mistral_7b": (8, {}),  # sized as Llama 3.1 8B (Megatron-Bridge ships no Mistral recipe)
}


def _arch(model: str) -> str:
    return MISTRAL_ARCH if model.startswith("mistral") else ARCH


def _pretrain(model: str) -> Recipe:
    gpus, parallel = SIZES[model]
    config = pretrain_config(**parallel)
    if model.startswith("llama"):  # Megatron-Bridge's Llama 3 pretrain: seq 8192, GBS 512, MBS 1, warmup 2000
        config.train = dataclasses.replace(
            config.train,
            seq_length=8192,
            global_batch_size=512,
            micro_batch_size=1,
            iters=1_168_251,
            eval_interval=2000,
        )
        config.scheduler = dataclasses.replace(config.scheduler, lr_warmup_iters=2000)
    return Recipe(
        name=f"{model}_pretrain",
        family="llama",
        kind="pretrain",
        model=ModelSpec(_arch(model), MODELS[model]),
        config=config,
        sized_for=SizedFor(gpus=gpus),
        description=f"{TITLES[model]}: pretraining from scratch on mock data",
    )


def _sft(model: str, kind: str = "sft") -> Recipe:
    gpus, parallel = SIZES[model]
    what = "full fine-tuning" if kind == "sft" else "LoRA fine-tuning (peft.scheme=dora for DoRA)"
    return Recipe(
        name=f"{model}_{kind}",
        family="llama",
        kind=kind,
        model=ModelSpec(_arch(model)),
        config=(sft_config if kind == "sft" else peft_config)(**parallel),
        sized_for=SizedFor(gpus=gpus),
        description=f"{TITLES[model]}: {what} of --hf-model",
    )


def llama32_1b_pretrain() -> Recipe:
    return _pretrain("llama32_1b")


def llama32_3b_pretrain() -> Recipe:
    return _pretrain("llama32_3b")


def llama31_8b_pretrain() -> Recipe:
    return _pretrain("llama31_8b")


def llama31_70b_pretrain() -> Recipe:
    return _pretrain("llama31_70b")


def smollm2_135m_pretrain() -> Recipe:
    return _pretrain("smollm2_135m")


def smollm2_360m_pretrain() -> Recipe:
    return _pretrain("smollm2_360m")


def smollm2_1p7b_pretrain() -> Recipe:
    return _pretrain("smollm2_1p7b")


def mistral_7b_pretrain() -> Recipe:
    return _pretrain("mistral_7b")


def llama32_1b_sft() -> Recipe:
    return _sft("llama32_1b")


def llama32_3b_sft() -> Recipe:
    return _sft("llama32_3b")


def llama31_8b_sft() -> Recipe:
    return _sft("llama31_8b")


def smollm2_135m_sft() -> Recipe:
    return _sft("smollm2_135m")


def llama31_70b_sft() -> Recipe:
    return _sft("llama31_70b")


def smollm2_360m_sft() -> Recipe:
    return _sft("smollm2_360m")


def smollm2_1p7b_sft() -> Recipe:
    return _sft("smollm2_1p7b")


def mistral_7b_sft() -> Recipe:
    return _sft("mistral_7b")


def llama32_1b_peft() -> Recipe:
    return _sft("llama32_1b", "peft")


def llama32_3b_peft() -> Recipe:
    return _sft("llama32_3b", "peft")


def llama31_8b_peft() -> Recipe:
    return _sft("llama31_8b", "peft")


def llama31_70b_peft() -> Recipe:
    return _sft("llama31_70b", "peft")


def smollm2_135m_peft() -> Recipe:
    return _sft("smollm2_135m", "peft")


def smollm2_360m_peft() -> Recipe:
    return _sft("smollm2_360m", "peft")


def smollm2_1p7b_peft() -> Recipe:
    return _sft("smollm2_1p7b", "peft")


def mistral_7b_peft() -> Recipe:
    return _sft("mistral_7b", "peft")


NAMES = tuple(name for name in dir() if name.endswith(("_pretrain", "_sft", "_peft")) and not name.startswith("_"))
