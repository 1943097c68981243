"""bridge-gpt-oss's registrations, and the name the core's "not supported" errors give for it."""

from __future__ import annotations

from bridge_core.plugins.discovery import discover


def test_registers_its_architecture_and_recipes():
    from bridge_gpt_oss import plugin

    registry = discover(environ={"BRIDGE_PLUGINS": "gpt_oss", "BRIDGE_STRICT_PLUGINS": "1"})
    (record,) = [p for p in registry.plugins if p.status != "blocked"]
    assert (record.distribution, record.status) == ("bridge-gpt-oss", "loaded")
    assert record.architectures == ["GptOssForCausalLM"]
    assert registry.bridge_for("GptOssForCausalLM").bridge == "bridge_gpt_oss.bridge:GptOssBridge"
    assert sorted(record.recipes) == sorted(plugin.RECIPES)


def test_known_plugins_name_this_distribution():
    from bridge_core.plugins.known_plugins import KNOWN_ARCHITECTURES, NOT_PUBLISHED, SHIPPED

    assert KNOWN_ARCHITECTURES["GptOssForCausalLM"] == "bridge-gpt-oss" and "bridge-gpt-oss" in SHIPPED
    assert "GptOssForCausalLM" not in NOT_PUBLISHED
