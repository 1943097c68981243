"""``gpt_oss_20b_sft`` trains a GPT-OSS toy (mock data, 12 steps, world size 1): the loss falls, and the
exported checkpoint's sinks and expert biases have moved (they receive gradients)."""

from __future__ import annotations

import pytest
import torch
from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel
from bridge_core.training.recipe import load_recipe
from bridge_core.training.trainer import train
from gpt_oss_toys import GPT_OSS, randomised_copy

OVERRIDES = [
    "parallel.pp=1",
    "parallel.ep=1",
    "data.kind=mock",
    "train.iters=12",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.seq_length=32",
    "train.eval_interval=null",
    "optimizer.lr=3e-3",
    "optimizer.min_lr=3e-4",
    "scheduler.lr_warmup_iters=2",
    "precision.dtype=fp32",
]


@pytest.fixture
def only_gpt_oss(monkeypatch):
    from bridge_core.plugins.discovery import reset_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "gpt_oss")
    reset_registry()
    yield
    reset_registry()


def test_sft_recipe_trains_the_toy(only_gpt_oss, toy_model_factory, tmp_path_factory, tmp_path):
    folder = randomised_copy(toy_model_factory(ToyModel("GptOssForCausalLM", GPT_OSS)), tmp_path_factory.mktemp, 1.0)
    recipe = load_recipe("gpt_oss_20b_sft").with_overrides([*OVERRIDES, f"checkpoint.save={tmp_path / 'run'}"])
    try:
        result = train(recipe, hf_model=folder)
    finally:
        destroy_model_parallel()
    losses = [result.losses[i] for i in range(1, 13)]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    proc = run_bridgectl(
        "export", "--megatron-path", str(tmp_path / "run"), "--hf-path", str(tmp_path / "hf"), plugins="gpt_oss"
    )
    assert proc.returncode == 0, proc.stderr
    before, after = SafetensorsCheckpoint(folder), SafetensorsCheckpoint(tmp_path / "hf")
    for name in (
        "model.layers.0.self_attn.sinks",
        "model.layers.1.mlp.experts.down_proj_bias",
        "model.layers.0.mlp.router.bias",
    ):
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
