"""{{ cookiecutter.__project_slug }}'s own pieces: registrations, recipes and FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

from bridge_core.discovery import discover


def test_registers_its_architectures_recipes_and_flops():
    registry = discover(environ={"BRIDGE_PLUGINS": "{{ cookiecutter.family }}", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("{{ cookiecutter.__project_slug }}", "loaded")
    assert record.architectures == [a.strip() for a in "{{ cookiecutter.architectures }}".split(",")]
    assert sorted(record.recipes) == sorted(f"{{ cookiecutter.family }}_{kind}" for kind in ("pretrain", "sft", "peft"))
    assert record.flops == ["{{ cookiecutter.family }}_decoder_layer"]


def test_recipes_become_megatron_lm_flags(capsys):
    from {{ cookiecutter.__module_name }} import recipes

    for kind, recipe in recipes.RECIPES.items():
        settings = recipe(tp=2, pp=1)
        assert settings["tensor-model-parallel-size"] == 2, kind
    args = recipes.to_args({"lr": 1e-5, "bf16": True, "fp16": False, "lora-target-modules": ["a", "b"]})
    assert args == ["--lr", "1e-05", "--bf16", "--lora-target-modules", "a", "b"]
    assert recipes.main(["sft", "--tp", "2"]) == 0
    assert "--tensor-model-parallel-size 2" in capsys.readouterr().out


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
