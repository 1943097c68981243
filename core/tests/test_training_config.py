"""The recipe contract (torch-free): typed overrides, one-line errors, checks, registration and lookup."""

from __future__ import annotations

import pytest

from bridge_core.errors import ConfigError, PluginError
from bridge_core.training.config import TrainingConfig, apply_overrides
from bridge_core.training.recipe import ModelSpec, Recipe


def test_overrides_set_typed_values_and_leave_the_recipe_unchanged():
    base = TrainingConfig()
    out = apply_overrides(
        base,
        [
            "train.iters=20",
            "optimizer.lr=1e-4",
            "parallel.tp=2",
            "parallel.vpp=none",
            "model.num_layers=2",
            "data.paths=a,b",
            "scheduler.style=wsd",
            "optimizer.use_distributed_optimizer=false",
            "checkpoint.save=out",
        ],
    )
    assert (out.train.iters, out.optimizer.lr, out.parallel.tp, out.parallel.vpp) == (20, 1e-4, 2, None)
    assert out.model == {"num_layers": 2} and out.data.paths == ["a", "b"] and out.scheduler.style == "wsd"
    assert out.optimizer.use_distributed_optimizer is False and out.checkpoint.save == "out"
    assert base.train.iters == 300_000 and base.model == {}
    assert TrainingConfig.from_dict(out.to_dict()) == out


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.iterz=3", "unknown setting 'train.iterz'; train has: iters, global_batch_size"),
        ("optimiser.lr=1", "unknown setting 'optimiser.lr'; sections: model, parallel, optimizer"),
        ("optimizer.name=sgd", "optimizer.name: 'sgd' is not valid; expected adam | adamw"),
        ("scheduler.style=step", "expected cosine | linear | constant | wsd | inverse-square-root"),
        ("train.iters=abc", "train.iters: 'abc' is not valid; expected int"),
        ("parallel.tp=1.5", "parallel.tp: 1.5 is not valid; expected int"),
        ("parallel.tp=none", "parallel.tp: cannot be none"),
        ("train.iters", "override 'train.iters' is not key=value"),
        ("model.a.b=1", "model overrides take one provider field name"),
    ],
)
def test_a_bad_override_is_a_one_line_error_naming_the_key_and_the_choices(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainingConfig(), [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "world", "message"),
    [
        (
            ["train.global_batch_size=10", "train.micro_batch_size=4"],
            None,
            "not a multiple of train.micro_batch_size=4",
        ),
        (["train.global_batch_size=6", "train.micro_batch_size=2"], 4, "x data parallel 4"),
        (["parallel.tp=2"], 3, "world size 3 is not a multiple of parallel.tp=2"),
        (["parallel.vpp=2"], None, "parallel.vpp=2 needs parallel.pp >= 2"),
        (["train.iters=10"], None, "scheduler.lr_warmup_iters=500 must be shorter than the decay (10 iterations"),
        (["train.iters=500"], None, "scheduler.lr_warmup_iters=500 must be shorter than the decay (500 iterations"),
        (["optimizer.min_lr=1"], None, "optimizer.min_lr=1.0 must lie between 0 and optimizer.lr"),
        (["scheduler.style=wsd"], None, "needs scheduler.lr_wsd_decay_iters"),
        (["data.kind=pretrain"], None, "data.kind=pretrain needs data.paths"),
        (["data.packing=true"], None, "data.packing=true packs SFT examples; it needs data.kind=sft, not mock"),
    ],
)
def test_checks_reject_inconsistent_settings(overrides, world, message):
    config = apply_overrides(TrainingConfig(), overrides)
    with pytest.raises(ConfigError, match=None) as info:
        config.check(world, run=True)
    assert message in str(info.value)


def test_data_files_are_required_only_to_run():
    config = apply_overrides(TrainingConfig(), ["data.kind=sft"])
    config.check(8)  # a recipe may leave the file to the user (dry-run, recipe show)
    with pytest.raises(ConfigError, match="data.kind=sft needs data.sft_prefix"):
        config.check(8, run=True)


def test_recipe_round_trips_through_its_json_document():
    recipe = Recipe("r", "toy", "pretrain", ModelSpec("LlamaForCausalLM", {"model_type": "llama"}))
    again = Recipe.from_dict(recipe.with_overrides(["train.iters=600"]).to_dict())
    assert again.config.train.iters == 600 and again.model == recipe.model and again.name == "r"
    with pytest.raises(ConfigError, match="kind must be one of pretrain, sft, peft"):
        Recipe("r", "toy", "finetune", ModelSpec("X"))


def test_load_recipe_checks_the_registration_and_names_the_installed_ones():
    import types

    from bridge_core import hookimpl
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.plugins.registry import Registry
    from bridge_core.training import recipe as recipe_module

    @hookimpl
    def register_recipes(register):
        register(name="good_pretrain", recipe=f"{__name__}:_good", family="toy", kind="pretrain")
        register(name="liar_sft", recipe=f"{__name__}:_good", family="toy", kind="sft")

    registry = Registry()
    plugin = types.ModuleType("recipes_under_test")
    plugin.BRIDGE_CONTRACT, plugin.register_recipes = ">=1.1", register_recipes
    registry.add_plugin(plugin, name="t", strict=True)
    reset_registry(registry)
    try:
        assert recipe_module.load_recipe("good_pretrain").name == "good_pretrain"
        with pytest.raises(ConfigError, match=r"unknown recipe 'good_pretrian'; did you mean good_pretrain\?"):
            recipe_module.load_recipe("good_pretrian")
        with pytest.raises(PluginError, match="is recipe 'good_pretrain' .* but is registered as 'liar_sft'"):
            recipe_module.load_recipe("liar_sft")
        assert [r.name for r in recipe_module.recipe_registrations()] == ["good_pretrain", "liar_sft"]
    finally:
        reset_registry()


def _good() -> Recipe:
    return Recipe("good_pretrain", "toy", "pretrain", ModelSpec("LlamaForCausalLM", {"model_type": "llama"}))
