"""Every bridge-deepseek recipe resolves at the GPU count it was sized for, its model builds from its
config values (no weights), its parallel sizes divide the model (256 experts over EP=64, 61 layers as
4 + 14 x 4 + 1 over PP=16), and its size is the published one (transformers' meta model agrees)."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

# DeepSeek's model cards: V2-Lite 15.7B total (2.4B active); V3 671B (685B with the 14B MTP module)
PUBLISHED = {"deepseek_v2_lite": 15.7e9, "deepseek_v3": 671e9}


def test_every_deepseek_recipe_resolves_builds_and_has_the_published_size():
    from bridge_deepseek import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    counts = check_recipes("deepseek", PUBLISHED, rel=0.01)
    assert set(counts) == set(PUBLISHED)
    v3 = recipes.deepseek_v3_pretrain()
    assert (v3.config.parallel.tp, v3.config.parallel.pp, v3.config.parallel.ep) == (2, 16, 64)
