"""Every bridge-gemma recipe resolves at the GPU count it was sized for, its model builds from its
config values (no weights), its parallel sizes divide the model, and its size is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

# Published parameter counts (model cards / safetensors totals; Gemma 3 4B/12B/27B: the text model only,
# the vision tower's ~0.4B left out)
PUBLISHED = {
    "gemma_2b": 2.51e9,
    "gemma_7b": 8.54e9,
    "gemma2_2b": 2.61e9,
    "gemma2_9b": 9.24e9,
    "gemma2_27b": 27.2e9,
    "gemma3_1b": 1.00e9,
    "gemma3_4b": 3.88e9,
    "gemma3_12b": 11.77e9,
    "gemma3_27b": 27.0e9,
}


def test_every_gemma_recipe_resolves_builds_and_has_the_published_size():
    from bridge_gemma import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    counts = check_recipes("gemma", PUBLISHED)
    assert set(counts) == set(PUBLISHED)
