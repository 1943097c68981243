"""Every bridge-mixtral recipe resolves at the GPU count it was sized for, its model builds from its
config values (no weights), its parallel sizes divide the model (8 experts over EP=8, layers over
PP x VPP), and its size is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

PUBLISHED = {"mixtral_8x7b": 46.70e9, "mixtral_8x22b": 140.62e9}  # Mistral AI's model cards: 46.7B, 141B


def test_every_mixtral_recipe_resolves_builds_and_has_the_published_size():
    from bridge_mixtral import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    assert set(check_recipes("mixtral", PUBLISHED)) == set(PUBLISHED)
