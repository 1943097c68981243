"""bridge-phi's own pieces: registration and FLOPs."""

from __future__ import annotations

from types import SimpleNamespace

from bridge_core.plugins.discovery import discover


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


def test_the_bridge_names_its_block_and_the_trainer_count_uses_it(monkeypatch):
    import bridge_phi.flops
    from bridge_phi.bridge import Phi3Bridge

    from bridge_core.model.provider import GPTModelProvider
    from bridge_core.training import flops

    registry = discover(environ={"BRIDGE_PLUGINS": "phi", "BRIDGE_STRICT_PLUGINS": "1"})
    shape = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2)
    provider = GPTModelProvider(**shape, kv_channels=16, vocab_size=256, gated_linear_unit=True).finalize()
    assert Phi3Bridge.FLOPS_DECODER_LAYER == "phi_decoder_layer"
    # bridge_phi.flops counts a standard layer, so the total equals the core's standard count
    got = flops.model_training_flops_per_token(provider, 128, Phi3Bridge(), registry)
    assert got == flops.training_flops_per_token(provider, 128) > 0
    monkeypatch.setattr(bridge_phi.flops, "decoder_layer_flops", lambda p: 0.0)  # the block is what counts
    scores_and_logits = 2 * flops.attention_score_flops(provider, 128) + flops.logits_flops(provider)
    assert flops.model_training_flops_per_token(provider, 128, Phi3Bridge(), registry) == 3 * scores_and_logits
