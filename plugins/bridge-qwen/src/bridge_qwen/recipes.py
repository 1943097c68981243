"""bridge-qwen's training recipes (Megatron-Bridge names): declarative, network-free, torch-free.

Pretrain recipes carry the model's config.json values (built from scratch, no download); SFT
recipes train the HF folder passed with ``--hf-model``. Parallel sizes are Megatron-Bridge's.
"""

from __future__ import annotations

from bridge_core.training.defaults import pretrain_config, sft_config
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor

ARCH = "Qwen3ForCausalLM"


def _qwen3(hidden: int, ffn: int, layers: int, heads: int, tied: bool) -> dict:
    return {
        "model_type": "qwen3",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151936,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }


MODELS = {
    "qwen3_600m": _qwen3(1024, 3072, 28, 16, True),
    "qwen3_1p7b": _qwen3(2048, 6144, 28, 16, True),
    "qwen3_4b": _qwen3(2560, 9728, 36, 32, True),
    "qwen3_8b": _qwen3(4096, 12288, 36, 32, False),
    "qwen3_14b": _qwen3(5120, 17408, 40, 40, False),
    "qwen3_32b": _qwen3(5120, 25600, 64, 64, False),
}

# model -> (GPUs, parallel sizes) it was sized for (Megatron-Bridge's qwen3 recipes)
SIZES = {
    "qwen3_600m": (1, {}),
    "qwen3_1p7b": (1, {}),
    "qwen3_4b": (2, {"tp": 2}),
    "qwen3_8b": (4, {"tp": 4}),
    "qwen3_14b": (8, {"tp": 8}),
    "qwen3_32b": (16, {"tp": 8, "pp": 2}),
}


def _pretrain(model: str) -> Recipe:
    gpus, parallel = SIZES[model]
    config = pretrain_config(**parallel)
    config.model["init_method_std"] = 0.02  # as Megatron-Bridge's qwen3 recipes
    return Recipe(
        name=f"{model}_pretrain",
        family="qwen",
        kind="pretrain",
        model=ModelSpec(ARCH, MODELS[model]),
        config=config,
        sized_for=SizedFor(gpus=gpus),
        description=f"{model} pretraining from scratch on mock data",
    )


def _sft(model: str) -> Recipe:
    gpus, parallel = SIZES[model]
    return Recipe(
        name=f"{model}_sft",
        family="qwen",
        kind="sft",
        model=ModelSpec(ARCH),
        config=sft_config(**parallel),
        sized_for=SizedFor(gpus=gpus),
        description=f"{model} full fine-tuning of the --hf-model folder",
    )


def qwen3_600m_pretrain() -> Recipe:
    return _pretrain("qwen3_600m")


def qwen3_1p7b_pretrain() -> Recipe:
    return _pretrain("qwen3_1p7b")


def qwen3_4b_pretrain() -> Recipe:
    return _pretrain("qwen3_4b")


def qwen3_8b_pretrain() -> Recipe:
    return _pretrain("qwen3_8b")


def qwen3_14b_pretrain() -> Recipe:
    return _pretrain("qwen3_14b")


def qwen3_32b_pretrain() -> Recipe:
    return _pretrain("qwen3_32b")


def qwen3_600m_sft() -> Recipe:
    return _sft("qwen3_600m")


def qwen3_8b_sft() -> Recipe:
    return _sft("qwen3_8b")
