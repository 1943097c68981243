"""bridge-deepseek's own pieces: registrations (both architectures, the FLOPs block, the recipes)."""

from __future__ import annotations

from bridge_core.plugins.discovery import discover


def test_registers_both_architectures_flops_and_recipes():
    registry = discover(environ={"BRIDGE_PLUGINS": "deepseek", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-deepseek", "loaded")
    assert sorted(record.architectures) == ["DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM"]
    assert registry.bridge_for("DeepseekV3ForCausalLM").bridge == "bridge_deepseek.bridge:DeepseekV3Bridge"
    assert registry.bridge_for("DeepseekV2ForCausalLM").bridge == "bridge_deepseek.bridge:DeepseekV2Bridge"
    assert record.flops == ["deepseek_decoder_layer"]
