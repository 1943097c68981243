"""The registry's Transformer Engine spellings of local-spec names, and ``DecoderBridge.HF_PREFIX``."""

from __future__ import annotations

from types import SimpleNamespace

from bridge_core.mappings import AutoMapping, FusedExpertMapping, GatedMLPMapping, QKVMapping
from bridge_core.model.decoder import DecoderBridge
from bridge_core.model.mapping_registry import MegatronMappingRegistry, te_spelling

QKV = "decoder.layers.*.self_attention.linear_qkv.weight"
FC1 = "decoder.layers.*.mlp.linear_fc1.weight"


def qkv() -> QKVMapping:
    return QKVMapping(QKV, "l.*.q", "l.*.k", "l.*.v")


def test_a_norm_is_fused_into_the_linear_after_it_when_the_bridge_maps_that_linear():
    listed = {QKV, FC1, "mtp.layers.0.x.self_attention.linear_q_up_proj.weight"}
    assert te_spelling("decoder.layers.*.input_layernorm.weight", listed) == (
        "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight"
    )
    assert te_spelling("decoder.layers.*.input_layernorm.bias", listed) == (
        "decoder.layers.*.self_attention.linear_qkv.layer_norm_bias"
    )
    assert te_spelling("decoder.layers.*.pre_mlp_layernorm.weight", listed) == (
        "decoder.layers.*.mlp.linear_fc1.layer_norm_weight"
    )
    assert te_spelling("mtp.layers.0.x.self_attention.q_layernorm.weight", listed) == (
        "mtp.layers.0.x.self_attention.linear_q_up_proj.layer_norm_weight"
    )
    # no linear_qkv (multi-latent attention), no dense linear_fc1 (experts only), QK-norm of Qwen3
    assert te_spelling("decoder.layers.*.input_layernorm.weight", {FC1}) is None
    assert te_spelling("decoder.layers.*.pre_mlp_layernorm.weight", {QKV}) is None
    assert te_spelling("decoder.layers.*.self_attention.q_layernorm.weight", listed) is None
    assert te_spelling("decoder.layers.*.self_attention.linear_proj.post_layernorm.weight", listed) is None


def test_local_experts_get_the_grouped_spelling_with_the_expert_index_last():
    reg = MegatronMappingRegistry(
        GatedMLPMapping("decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight", "l.*.e.*.gate", "l.*.e.*.up"),
        FusedExpertMapping("decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.bias", "l.*.down_bias"),
    )
    assert [m.megatron_param for m in reg] == [
        "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
        "decoder.layers.*.mlp.experts.linear_fc1.weight*",
        "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.bias",
        "decoder.layers.*.mlp.experts.linear_fc2.bias*",
    ]
    grouped = reg.megatron_to_hf_lookup("decoder.layers.2.mlp.experts.linear_fc1.weight5")
    assert isinstance(grouped, GatedMLPMapping) and grouped.hf_param == {"gate": "l.2.e.5.gate", "up": "l.2.e.5.up"}
    bias = reg.megatron_to_hf_lookup("decoder.layers.2.mlp.experts.linear_fc2.bias3")
    assert isinstance(bias, FusedExpertMapping) and (bias.hf_param, bias.index, bias.tp_dim) == ("l.2.down_bias", 3, 1)


def test_the_te_spelling_keeps_the_mapping_and_each_name_matches_once():
    reg = MegatronMappingRegistry(qkv(), AutoMapping("decoder.layers.*.input_layernorm.weight", "l.*.norm"))
    local = reg.megatron_to_hf_lookup("decoder.layers.3.input_layernorm.weight")
    te = reg.megatron_to_hf_lookup("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")
    assert type(local) is type(te) is AutoMapping and local.hf_param == te.hf_param == "l.3.norm"
    assert [m.megatron_param for m in reg.hf_to_megatron_lookup("l.3.norm")] == [
        "decoder.layers.*.input_layernorm.weight",
        "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight",
    ]


def test_a_te_spelling_the_bridge_lists_itself_is_not_added_again():
    te = "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight"
    reg = MegatronMappingRegistry(
        qkv(), AutoMapping("decoder.layers.*.input_layernorm.weight", "l.*.norm"), AutoMapping(te, "l.*.norm")
    )
    assert [m.megatron_param for m in reg].count(te) == 1
    assert reg.megatron_to_hf_lookup("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight").hf_param == (
        "l.0.norm"
    )


class PrefixedBridge(DecoderBridge):
    HF_PREFIX = "model.language_model."


def test_hf_prefix_moves_every_model_name_of_the_table_and_nothing_else():
    config = SimpleNamespace()
    stock = {n for m in DecoderBridge(config).mapping_registry() for n in m.hf_names}
    moved = {n for m in PrefixedBridge(config).mapping_registry() for n in m.hf_names}
    assert "model.layers.*.self_attn.q_proj.weight" in stock and "lm_head.weight" in stock
    assert moved == {n.replace("model.", "model.language_model.", 1) if n != "lm_head.weight" else n for n in stock}
