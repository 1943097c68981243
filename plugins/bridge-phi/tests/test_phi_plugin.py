"""bridge-phi's own pieces: registration and FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

from bridge_core.discovery import discover


def test_registers_phi3_and_its_flops():
    registry = discover(environ={"BRIDGE_PLUGINS": "phi", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-phi", "loaded")
    assert record.architectures == ["Phi3ForCausalLM"]
    assert registry.bridge_for("Phi3ForCausalLM").bridge == "bridge_phi.bridge:Phi3Bridge"
    assert record.flops == ["phi_decoder_layer"]


def test_decoder_layer_flops_counts_the_projections():
    from bridge_phi.flops import decoder_layer_flops

    provider = SimpleNamespace(
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=128,
        gated_linear_unit=True,
    )
    qkv, out, mlp = 64 * (4 + 2 * 2) * 16, 4 * 16 * 64, 3 * 64 * 128
    assert decoder_layer_flops(provider) == 2.0 * (qkv + out + mlp)
