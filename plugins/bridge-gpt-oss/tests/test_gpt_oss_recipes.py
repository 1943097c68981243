"""Every bridge-gpt-oss recipe resolves at the GPU count it was sized for, its model builds from its
config values (no weights), its parallel sizes divide the model (experts over EP, layers over PP), and
its size is the published one (OpenAI's model card: 20.9B and 116.8B parameters in total)."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

PUBLISHED = {"gpt_oss_20b": 20.9e9, "gpt_oss_120b": 116.8e9}


def test_every_gpt_oss_recipe_resolves_builds_and_has_the_published_size():
    from bridge_gpt_oss import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    counts = check_recipes("gpt_oss", PUBLISHED)
    print(counts)
    assert set(counts) == set(PUBLISHED)


def test_recipes_use_the_sink_attention():
    from bridge_gpt_oss import recipes

    for name in recipes.NAMES:
        assert getattr(recipes, name)().config.attention.core_attention == "local", name
