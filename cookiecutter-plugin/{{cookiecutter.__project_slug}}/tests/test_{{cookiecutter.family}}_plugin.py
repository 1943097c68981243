{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
"""{{ cookiecutter.__project_slug }}'s own pieces: registrations, recipes (typed, and they train) and FLOPs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from bridge_core.discovery import discover

# A tiny model of the family's shape, and a run of 4 steps of 4 sequences of 32 tokens (mock data)
TOY = {
    "model_type": "{{ cookiecutter.model_type }}",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 256,
    "max_position_embeddings": 128,
}
TOY_PROVIDER = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "kv_channels": 16, "vocab_size": 256}
TINY_RUN = [
    "data.kind=mock",
    "train.iters=4",
    "train.global_batch_size=4",
    "train.micro_batch_size=2",
    "train.seq_length=32",
    "train.eval_interval=none",
    "scheduler.lr_warmup_iters=1",
    "optimizer.lr=1e-2",
    "optimizer.min_lr=1e-3",
]


def test_registers_its_architectures_recipes_and_flops():
    registry = discover(environ={"BRIDGE_PLUGINS": "{{ cookiecutter.family }}", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("{{ cookiecutter.__project_slug }}", "loaded")
    assert record.architectures == [a.strip() for a in "{{ cookiecutter.architectures }}".split(",")]
    assert sorted(record.recipes) == ["{{ cookiecutter.family }}_pretrain", "{{ cookiecutter.family }}_sft"]
    assert record.flops == ["{{ cookiecutter.family }}_decoder_layer"]


def test_recipes_are_typed_and_resolve(monkeypatch, capsys):
    from bridge_core.cli.main import main
    from bridge_core.registry import reset_registry
    from bridge_core.training.recipe import Recipe, load_recipe

    monkeypatch.setenv("BRIDGE_PLUGINS", "{{ cookiecutter.family }}")
    reset_registry()
    try:
        for kind in ("pretrain", "sft"):
            recipe = load_recipe(f"{{ cookiecutter.family }}_{kind}")
            assert isinstance(recipe, Recipe) and recipe.kind == kind
            assert recipe.model.needs_hf_folder == (kind == "sft")
            assert main(["train", "--recipe", recipe.name, "--dry-run", "parallel.tp=1"]) == 0
            assert json.loads(capsys.readouterr().out)["name"] == recipe.name
    finally:
        reset_registry()


def _train(recipe: str, save, *args: str) -> list[dict]:
    """``bridgectl train`` as a user runs it, on a tiny batch for a few steps; the metrics it wrote."""
    exe = Path(sys.executable).parent / "bridgectl"
    env = {**os.environ, "BRIDGE_PLUGINS": "{{ cookiecutter.family }}", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [str(exe), "train", "--recipe", recipe, *args, *TINY_RUN, f"checkpoint.save={save}"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


def test_recipes_train_a_toy_for_a_few_steps(toy_model_factory, tmp_path):
    """SFT from a toy HF folder's weights, and pretraining from the recipe's values shrunk to a toy."""
    toy = toy_model_factory({**TOY, "architectures": ["{{ archs[0] }}"]})
    sft = _train("{{ cookiecutter.family }}_sft", tmp_path / "sft", "--hf-model", str(toy))
    assert [row["step"] for row in sft] == [1, 2, 3, 4]
    assert sft[-1]["loss"] < sft[0]["loss"], [row["loss"] for row in sft]
    shrink = [f"model.{k}={v}" for k, v in TOY_PROVIDER.items()]
    pretrain = _train("{{ cookiecutter.family }}_pretrain", tmp_path / "pretrain", *shrink)
    assert [row["step"] for row in pretrain] == [1, 2, 3, 4] and all(row["loss"] > 0 for row in pretrain)


def test_decoder_layer_flops_counts_the_projections():
    from {{ cookiecutter.__module_name }}.flops import decoder_layer_flops

    provider = SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=128,
        gated_linear_unit=True,
    )
    qkv, out, mlp = 64 * (4 + 2 * 2) * 16, 4 * 16 * 64, 3 * 64 * 128
    assert decoder_layer_flops(provider) == 2.0 * (qkv + out + mlp)
