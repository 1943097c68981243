"""bridge-llama is discovered, loads under strict mode and registers its architectures."""

from bridge_core.plugins.discovery import discover


def test_registers_llama_architectures():
    registry = discover(environ={"BRIDGE_PLUGINS": "bridge-llama", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.name, record.distribution, record.status) == ("llama", "bridge-llama", "loaded")
    assert registry.bridge_for("LlamaForCausalLM").bridge == "bridge_llama.bridge:LlamaBridge"
    assert registry.bridge_for("MistralForCausalLM").model_type == "mistral"
