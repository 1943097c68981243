"""DeepSeek-V3's FLOPs per token, by hand: MLA projections, 3 dense + 58 MoE layers, the MTP layer."""

from __future__ import annotations

import pytest
from bridge_core.training import flops

SEQ = 4096
H, HEADS = 7168, 128
MLA = 2 * (H * 1536 + 1536 * HEADS * 192 + H * 576 + 512 * HEADS * 256 + HEADS * 128 * H)
DENSE = 2 * 3 * H * 18432
MOE = 2 * H * 256 + 8 * 2 * 3 * H * 2048 + 2 * 3 * H * 2048  # router, top-8 experts, the shared expert
SCORES = 2 * HEADS * (192 + 128) * SEQ / 2  # causal: half the keys
LOGITS = 2 * H * 129280


@pytest.fixture(scope="module")
def v3():
    from bridge_core.testing.recipes import recipe_provider

    from bridge_deepseek.recipes import deepseek_v3_pretrain

    return recipe_provider(deepseek_v3_pretrain())


def test_layers_count_mla_and_dense_or_moe(v3):
    from bridge_deepseek.flops import decoder_layer_flops

    assert decoder_layer_flops(v3, 1) == MLA + DENSE
    assert decoder_layer_flops(v3, 4) == MLA + MOE
    assert decoder_layer_flops(v3, 62) == MLA + MOE  # the MTP layer


def test_v3_forward_flops_per_token(v3):
    from bridge_deepseek.flops import decoder_layer_flops

    mtp = 2 * 2 * H * H + MLA + MOE + SCORES + LOGITS
    expected = 3 * (MLA + DENSE) + 58 * (MLA + MOE) + 61 * SCORES + LOGITS + mtp
    assert flops.forward_flops_per_token(v3, SEQ, decoder_layer_flops) == expected
    # about 2 x 37B active parameters per token, plus attention
    assert 75e9 < expected < 90e9


def test_the_bridge_names_the_registered_block(v3):
    from bridge_core import AutoBridge  # noqa: F401  (the registry sees the plugin)
    from bridge_core.plugins.discovery import get_registry

    from bridge_deepseek.bridge import DeepseekV3Bridge

    block = flops.decoder_layer_block(DeepseekV3Bridge(), get_registry())
    assert block(v3, 1) == MLA + DENSE
