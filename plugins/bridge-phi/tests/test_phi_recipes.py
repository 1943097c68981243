"""Every bridge-phi recipe resolves at the GPU count it was sized for, its model builds from its config
values (no weights), its parallel sizes divide the model, and its size is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

PUBLISHED = {"phi3_mini_4k": 3.82e9, "phi3_medium_4k": 13.96e9}  # the model cards' sizes


def test_every_phi_recipe_resolves_builds_and_has_the_published_size():
    from bridge_phi import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    assert set(check_recipes("phi", PUBLISHED)) == set(PUBLISHED)


def test_phi35_mini_is_left_out_because_its_longrope_scaling_is_refused():
    """Phi-3.5-mini's config (longrope, 128k positions) is refused by the bridge, so it has no recipe."""
    import pytest
    from bridge_phi.recipes import MODELS
    from transformers import AutoConfig

    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.errors import ConfigError

    values = {k: v for k, v in MODELS["phi3_mini_4k"][1].items() if k not in ("architecture", "model_type")}
    values |= {
        "max_position_embeddings": 131072,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.1] * 48},
        "sliding_window": 262144,
    }
    config = AutoConfig.for_model("phi3", architectures=["Phi3ForCausalLM"], **values)
    with pytest.raises(ConfigError, match="longrope"):
        AutoBridge.from_hf_config(config).to_megatron_provider()
