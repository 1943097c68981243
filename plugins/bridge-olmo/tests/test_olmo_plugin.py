"""bridge-olmo's registrations, and the layer spec it refuses."""

from __future__ import annotations

import pytest
from bridge_core.errors import ConfigError
from bridge_core.plugins.discovery import discover


def test_registers_its_architectures():
    registry = discover(environ={"BRIDGE_PLUGINS": "olmo", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-olmo", "loaded")
    assert record.architectures == ["Olmo2ForCausalLM", "OlmoeForCausalLM"]
    assert registry.bridge_for("OlmoeForCausalLM").bridge == "bridge_olmo.olmoe:OlmoeBridge"
    assert registry.bridge_for("Olmo2ForCausalLM").bridge == "bridge_olmo.olmo2:Olmo2Bridge"


def test_transformer_engine_spec_is_refused():
    from bridge_olmo.providers import Olmo2Provider, own_spec

    provider = Olmo2Provider(num_layers=1, hidden_size=64, num_attention_heads=4, transformer_layer_spec="te")
    with pytest.raises(ConfigError, match=r"transformer_layer_spec='te' is not supported by bridge-olmo"):
        own_spec(provider)
    provider.transformer_layer_spec = "auto"
    assert own_spec(provider)


def test_providers_say_local_modules_even_with_transformer_engine(monkeypatch):
    import bridge_core.model.provider as core_provider

    from bridge_olmo.providers import Olmo2Provider, OlmoeProvider

    monkeypatch.setattr(core_provider, "transformer_engine_available", lambda: True)
    for cls in (Olmo2Provider, OlmoeProvider):
        provider = cls(num_layers=1, hidden_size=64, num_attention_heads=4)
        assert provider.transformer_layer_spec == "auto" and not provider.uses_transformer_engine()
    assert core_provider.GPTModelProvider(num_layers=1, hidden_size=64, num_attention_heads=4).uses_transformer_engine()
