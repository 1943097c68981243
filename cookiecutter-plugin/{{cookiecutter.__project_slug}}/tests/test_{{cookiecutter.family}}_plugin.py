{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
"""{{ cookiecutter.__project_slug }}'s own pieces: registrations, recipes (typed, and they train; PEFT exports and
merges) and FLOPs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from bridge_core.plugins.discovery import discover

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
    kinds = ("peft", "pretrain", "sft")
    assert sorted(record.recipes) == [f"{{ cookiecutter.family }}_{kind}" for kind in kinds]
    assert record.flops == ["{{ cookiecutter.family }}_decoder_layer"]


def test_recipes_are_typed_and_resolve(monkeypatch, capsys):
    from bridge_core.cli.main import main
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.training.recipe import Recipe, load_recipe

    monkeypatch.setenv("BRIDGE_PLUGINS", "{{ cookiecutter.family }}")
    reset_registry()
    try:
        for kind in ("pretrain", "sft", "peft"):
            recipe = load_recipe(f"{{ cookiecutter.family }}_{kind}")
            assert isinstance(recipe, Recipe) and recipe.kind == kind
            assert recipe.model.needs_hf_folder == (kind != "pretrain")
            assert (recipe.config.peft.scheme == "lora") == (kind == "peft")
            assert main(["train", "--recipe", recipe.name, "--dry-run", "parallel.tp=1"]) == 0
            assert json.loads(capsys.readouterr().out)["name"] == recipe.name
    finally:
        reset_registry()


def _bridgectl(*args: str) -> None:
    """``bridgectl`` as a user runs it, on the CPU."""
    exe = Path(sys.executable).parent / "bridgectl"
    env = {**os.environ, "BRIDGE_PLUGINS": "{{ cookiecutter.family }}", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _train(recipe: str, save, *args: str) -> list[dict]:
    """``bridgectl train`` on a tiny batch for a few steps; the metrics it wrote."""
    _bridgectl("train", "--recipe", recipe, *args, *TINY_RUN, f"checkpoint.save={save}")
    return [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_recipes_train_a_toy_for_a_few_steps(toy_model_factory, tmp_path):
    """SFT from a toy HF folder's weights, and pretraining from the recipe's values shrunk to a toy."""
    toy = toy_model_factory({**TOY, "architectures": ["{{ archs[0] }}"]})
    sft = _train("{{ cookiecutter.family }}_sft", tmp_path / "sft", "--hf-model", str(toy))
    assert [row["step"] for row in sft] == [1, 2, 3, 4]
    assert sft[-1]["loss"] < sft[0]["loss"], [row["loss"] for row in sft]
    shrink = [f"model.{k}={v}" for k, v in TOY_PROVIDER.items()]
    pretrain = _train("{{ cookiecutter.family }}_pretrain", tmp_path / "pretrain", *shrink)
    assert [row["step"] for row in pretrain] == [1, 2, 3, 4] and all(row["loss"] > 0 for row in pretrain)


def test_peft_recipe_trains_adapters_only_and_exports_them(toy_model_factory, tmp_path):
    """LoRA on a toy HF folder, its HF PEFT adapter (``peft export``) and the merged model (``peft merge``),
    which differs from the base exactly in the weights the adapter names."""
    toy = toy_model_factory({**TOY, "architectures": ["{{ archs[0] }}"]})
    run, adapter, merged = tmp_path / "peft", tmp_path / "adapter", tmp_path / "merged"
    rows = _train("{{ cookiecutter.family }}_peft", run, "--hf-model", str(toy), "peft.rank=4", "peft.alpha=8")
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] < rows[0]["loss"], [row["loss"] for row in rows]
    _bridgectl("peft", "export", "--megatron-path", str(run), "--hf-path", str(adapter))
    _bridgectl("peft", "merge", "--megatron-path", str(run), "--hf-path", str(merged))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8)
    lora = _weights(adapter)
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in lora)
    modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in lora}
    base, tuned = _weights(toy), _weights(merged)
    assert sorted(tuned) == sorted(base)
    changed = {k.removesuffix(".weight") for k in base if not base[k].equal(tuned[k])}
    assert changed == modules and len(modules) >= 4 * TOY["num_hidden_layers"], sorted(changed ^ modules)


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
