"""``bridge_core.testing.recipes.mla_parameter_count``: one multi-latent attention block, by hand."""

from types import SimpleNamespace

from bridge_core.testing.recipes import mla_parameter_count


def mla(q_lora_rank):
    return SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        qk_head_dim=16,
        qk_pos_emb_head_dim=8,
        v_head_dim=16,
        kv_lora_rank=32,
        q_lora_rank=q_lora_rank,
    )


def test_mla_with_q_lora():
    # q: 64x48 down, 48 norm, 48x(4x24) up; kv: 64x(32+8) down, 32 norm, 32x(4x32) up; out: 64x64
    assert mla_parameter_count(mla(48)) == 64 * 48 + 48 + 48 * 96 + 64 * 40 + 32 + 32 * 128 + 64 * 64


def test_mla_with_a_plain_q_projection():
    assert mla_parameter_count(mla(None)) == 64 * 96 + 64 * 40 + 32 + 32 * 128 + 64 * 64
