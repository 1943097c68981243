"""Megatron-Bridge's base settings (``recipes/common.py``) as ``TrainingConfig``s a recipe starts from."""

from __future__ import annotations

from typing import Any

from bridge_core.training.config import (
    CheckpointConfig,
    DataConfig,
    OptimizerConfig,
    ParallelConfig,
    PeftConfig,
    SchedulerConfig,
    TrainingConfig,
    TrainLoopConfig,
)


def pretrain_config(**parallel: Any) -> TrainingConfig:
    """Pretraining: AdamW 3e-4 (min 3e-5, warmup 500, wd 0.1), cosine, 300k iters, GBS 32 / MBS 2,
    mock data at seq 4096, distributed optimizer, checkpoints every 500, seed 1234."""
    return TrainingConfig(
        parallel=ParallelConfig(**parallel),
        optimizer=OptimizerConfig(lr=3e-4, min_lr=3e-5, weight_decay=0.1, beta2=0.95),
        scheduler=SchedulerConfig(style="cosine", lr_warmup_iters=500),
        train=TrainLoopConfig(iters=300_000, global_batch_size=32, micro_batch_size=2, seq_length=4096, seed=1234),
        data=DataConfig(kind="mock", split="9999,8,2"),
        checkpoint=CheckpointConfig(save_interval=500),
    )


def sft_config(**parallel: Any) -> TrainingConfig:
    """Full fine-tuning: AdamW 5e-6 (min 0, warmup 50, beta2 0.98), cosine, 1000 iters, GBS 128 / MBS 1,
    seq 2048, eval every 100 (32 iters), checkpoints every 100, seed 5678; data: an SFT JSONL file."""
    return TrainingConfig(
        parallel=ParallelConfig(**parallel),
        optimizer=OptimizerConfig(lr=5e-6, min_lr=0.0, weight_decay=0.1, beta2=0.98),
        scheduler=SchedulerConfig(style="cosine", lr_warmup_iters=50),
        train=TrainLoopConfig(
            iters=1000, global_batch_size=128, micro_batch_size=1, seq_length=2048, seed=5678, eval_interval=100
        ),
        data=DataConfig(kind="sft"),
        checkpoint=CheckpointConfig(save_interval=100),
    )


def peft_config(**parallel: Any) -> TrainingConfig:
    """LoRA fine-tuning: the SFT settings with AdamW 1e-4 (min 0, warmup 50, beta2 0.98) and LoRA rank 32,
    alpha 32 on linear_qkv, linear_proj, linear_fc1, linear_fc2 (``peft.scheme=dora`` for DoRA); no
    sequence parallelism (adapters do not support it yet)."""
    config = sft_config(**{**parallel, "sequence_parallel": False})
    config.optimizer = OptimizerConfig(lr=1e-4, min_lr=0.0, weight_decay=0.1, beta2=0.98)
    config.peft = PeftConfig(scheme="lora", rank=32, alpha=32.0)
    return config
