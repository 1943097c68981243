"""Every bridge-olmo recipe resolves at the GPU count it was sized for, its model builds from its config
values (no weights), its parallel sizes divide the model (OLMoE's 64 experts over EP=8), and its size
is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

# Published parameter counts (the Hub's safetensors totals; OLMoE: 6.92B total, 1.28B active)
PUBLISHED = {"olmo2_1b": 1.485e9, "olmo2_7b": 7.30e9, "olmo2_13b": 13.72e9, "olmoe_7b": 6.92e9}


def test_every_olmo_recipe_resolves_builds_and_has_the_published_size():
    from bridge_olmo import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    assert set(check_recipes("olmo", PUBLISHED)) == set(PUBLISHED)
    olmoe = recipes.olmoe_7b_pretrain()
    assert (olmoe.config.parallel.ep, olmoe.config.train.global_batch_size) == (8, 2048)
