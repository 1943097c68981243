"""bridge-olmo's registrations, and what its modeling code refuses."""

from __future__ import annotations

from bridge_core.discovery import discover


def test_registers_its_architectures():
    registry = discover(environ={"BRIDGE_PLUGINS": "olmo", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-olmo", "loaded")
    assert record.architectures == ["Olmo2ForCausalLM", "OlmoeForCausalLM"]
    assert registry.bridge_for("OlmoeForCausalLM").bridge == "bridge_olmo.olmoe:OlmoeBridge"
    assert registry.bridge_for("Olmo2ForCausalLM").bridge == "bridge_olmo.olmo2:Olmo2Bridge"
