"""Every bridge-qwen recipe resolves at the GPU count it was sized for, its model builds from its config
values (no weights), its parallel sizes divide the model (experts over EP, Qwen3-235B's 94 layers +
split 5 + 14 x 6 + 5 over PP=16), and its size is the published one."""

from __future__ import annotations

from bridge_core.testing.recipes import check_recipes

# Published parameter counts (the model cards: Qwen2.5 0.49B ... 72.7B; MoE totals, not the active ones)
PUBLISHED = {
    "qwen25_500m": 0.494e9,
    "qwen25_1p5b": 1.54e9,
    "qwen25_3b": 3.09e9,
    "qwen25_7b": 7.61e9,
    "qwen25_14b": 14.7e9,
    "qwen25_32b": 32.5e9,
    "qwen25_72b": 72.7e9,
    "qwen3_600m": 0.6e9,
    "qwen3_1p7b": 1.7e9,
    "qwen3_4b": 4.0e9,
    "qwen3_8b": 8.2e9,
    "qwen3_14b": 14.8e9,
    "qwen3_32b": 32.8e9,
    "qwen15_moe_a2p7b": 14.3e9,
    "qwen2_57b_a14b": 57.4e9,
    "qwen3_30b_a3b": 30.5e9,
    "qwen3_235b_a22b": 235e9,
}


def test_every_qwen_recipe_resolves_builds_and_has_the_published_size():
    from bridge_qwen import plugin, recipes

    assert set(plugin.RECIPES) == set(recipes.NAMES)
    assert set(check_recipes("qwen", PUBLISHED)) == set(PUBLISHED)
    big = recipes.qwen3_235b_a22b_pretrain()
    assert (big.config.parallel.tp, big.config.parallel.pp, big.config.parallel.ep) == (4, 16, 8)
    first, last = (
        big.config.model["num_layers_in_first_pipeline_stage"],
        big.config.model["num_layers_in_last_pipeline_stage"],
    )
    assert first + 14 * 6 + last == 94
