"""bridge-mixtral's own pieces: registrations and FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

from bridge_core.plugins.discovery import discover


def test_registers_its_architecture_and_flops():
    registry = discover(environ={"BRIDGE_PLUGINS": "mixtral", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-mixtral", "loaded")
    assert record.architectures == ["MixtralForCausalLM"]
    assert registry.bridge_for("MixtralForCausalLM").bridge == "bridge_mixtral.bridge:MixtralBridge"
    assert record.flops == ["mixtral_decoder_layer"]


def test_decoder_layer_flops_count_the_routed_experts_only():
    from bridge_mixtral.flops import decoder_layer_flops

    provider = SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=32,
        moe_ffn_hidden_size=32,
        num_moe_experts=8,
        moe_router_topk=2,
    )
    qkv, out, router, experts = 64 * (4 + 2 * 2) * 16, 4 * 16 * 64, 64 * 8, 2 * 3 * 64 * 32
    assert decoder_layer_flops(provider) == 2.0 * (qkv + out + router + experts)


def test_the_bridge_names_its_block_which_matches_the_core_moe_count():
    from bridge_core.model.provider import GPTModelProvider
    from bridge_core.training import flops

    from bridge_mixtral.bridge import MixtralBridge

    registry = discover(environ={"BRIDGE_PLUGINS": "mixtral", "BRIDGE_STRICT_PLUGINS": "1"})
    provider = GPTModelProvider(
        num_layers=2,
        hidden_size=64,
        ffn_hidden_size=32,
        moe_ffn_hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        num_moe_experts=8,
        moe_router_topk=2,
        vocab_size=256,
        gated_linear_unit=True,
    ).finalize()
    assert MixtralBridge.FLOPS_DECODER_LAYER == "mixtral_decoder_layer"
    got = flops.model_training_flops_per_token(provider, 128, MixtralBridge(), registry)
    assert got == flops.training_flops_per_token(provider, 128) > 0
