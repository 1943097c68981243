"""Every bridge-llama recipe (Llama 3.x, SmolLM2, Mistral 7B) resolves at the GPU count it was sized
for, its model builds from its config values (no weights), its parallel sizes divide the model, and
its size is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

# Published parameter counts (the model cards / the Hub's safetensors totals)
PUBLISHED = {
    "llama32_1b": 1.24e9,
    "llama32_3b": 3.21e9,
    "llama31_8b": 8.03e9,
    "llama31_70b": 70.6e9,
    "smollm2_135m": 0.135e9,
    "smollm2_360m": 0.362e9,
    "smollm2_1p7b": 1.71e9,
    "mistral_7b": 7.24e9,
}


def test_every_llama_recipe_resolves_builds_and_has_the_published_size():
    from bridge_llama import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    assert set(check_recipes("llama", PUBLISHED)) == set(PUBLISHED)


def test_mistral_recipe_keeps_the_sliding_window():
    from bridge_core.testing.recipes import recipe_provider
    from bridge_llama.recipes import mistral_7b_pretrain

    provider = recipe_provider(mistral_7b_pretrain())
    assert provider.window_size == (4095, 0)
