"""An in-process test plugin for the trainer's tests: the core test bridges plus two toy recipes."""

from __future__ import annotations

from _test_bridges import register_bridges  # noqa: F401  (the Llama-shaped test bridge)

from bridge_core import hookimpl
from bridge_core.testing.toys import TINY_LLAMA
from bridge_core.training.config import (
    CheckpointConfig,
    OptimizerConfig,
    PrecisionConfig,
    SchedulerConfig,
    TrainingConfig,
    TrainLoopConfig,
)
from bridge_core.training.recipe import ModelSpec, Recipe, SizedFor

BRIDGE_CONTRACT = ">=1.1,<2"

TOY = TINY_LLAMA

MOE_TOY = {  # the test bridges' Qwen3-MoE layout (experts stacked on disk): 4 experts, top-2, no aux loss
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 40,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-6,
}


def _config() -> TrainingConfig:
    return TrainingConfig(
        optimizer=OptimizerConfig(lr=3e-3, min_lr=3e-4, weight_decay=0.01),
        scheduler=SchedulerConfig(style="cosine", lr_warmup_iters=2),
        train=TrainLoopConfig(iters=20, global_batch_size=8, micro_batch_size=2, seq_length=64, eval_interval=None),
        checkpoint=CheckpointConfig(save_interval=5),
        precision=PrecisionConfig(dtype="fp32"),  # the tests' exactness claims are fp32 ones, on a GPU too
    )


def toy_pretrain() -> Recipe:
    return Recipe("toy_pretrain", "toy", "pretrain", ModelSpec("LlamaForCausalLM", TOY), _config(), SizedFor(gpus=1))


def toy_sft() -> Recipe:
    return Recipe("toy_sft", "toy", "sft", ModelSpec("LlamaForCausalLM"), _config(), SizedFor(gpus=1))


def toy_moe_sft() -> Recipe:
    return Recipe("toy_moe_sft", "toy", "sft", ModelSpec("Qwen3MoeForCausalLM"), _config(), SizedFor(gpus=1))


@hookimpl
def register_recipes(register):
    register(name="toy_pretrain", recipe="_training_plugin:toy_pretrain", family="toy", kind="pretrain")
    register(name="toy_sft", recipe="_training_plugin:toy_sft", family="toy", kind="sft")
    register(name="toy_moe_sft", recipe="_training_plugin:toy_moe_sft", family="toy", kind="sft")


def use() -> None:
    """Make this module the only plugin of this process."""
    import _training_plugin

    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.plugins.registry import Registry

    registry = Registry()
    registry.add_plugin(_training_plugin, name="training-test", strict=True)
    reset_registry(registry)
