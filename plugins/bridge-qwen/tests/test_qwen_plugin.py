"""bridge-qwen is discovered, loads under strict mode and registers its architectures."""

from bridge_core.plugins.discovery import discover


def test_registers_qwen_architectures():
    registry = discover(environ={"BRIDGE_PLUGINS": "qwen", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.name, record.distribution, record.status) == ("qwen", "bridge-qwen", "loaded")
    assert set(record.architectures) == {
        "Qwen2ForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
    }
    assert registry.bridge_for("Qwen3MoeForCausalLM").bridge == "bridge_qwen.qwen3_moe:Qwen3MoeBridge"
