"""Plugin code failing in any way (sys.exit included), conflicts refused where used, actionable lookups."""

from __future__ import annotations

import sys
import types

import pytest

from bridge_core import hookimpl
from bridge_core.errors import ConfigError, PluginError, UnsupportedArchitectureError
from bridge_core.plugins.discovery import is_strict
from bridge_core.plugins.registry import Registry


def plugin(*bridges: dict, in_hook=None):
    def register_bridges(register):
        for kwargs in bridges:
            register(**kwargs)
        if in_hook:
            in_hook()

    ns = types.ModuleType("fake_plugin")
    ns.register_bridges = hookimpl(register_bridges)
    ns.BRIDGE_CONTRACT = ">=1.0,<2"
    return ns


LLAMA = {"architecture": "LlamaForCausalLM", "bridge": "bridge_llama.bridge:LlamaBridge"}
HOSTILE = {"architecture": "LlamaForCausalLM", "bridge": "hostile.bridge:Takeover"}


@pytest.mark.parametrize("first", ["hostile", "llama"])
def test_an_architecture_two_plugins_register_is_an_error_where_it_is_used(first):
    reg = Registry()
    plugins = {
        "hostile": (plugin(HOSTILE), "bridge-aaa", "0.1"),
        "llama": (plugin(LLAMA, {**LLAMA, "architecture": "MistralForCausalLM"}), "bridge-llama", "1.0.0"),
    }
    for name in sorted(plugins, key=lambda n: n != first):
        obj, dist, version = plugins[name]
        reg.add_plugin(obj, name=name, distribution=dist, version=version)
    with pytest.raises(PluginError) as err:
        reg.bridge_for("LlamaForCausalLM")  # whichever was discovered first
    assert "LlamaForCausalLM is registered by both" in str(err.value)
    assert "bridge-aaa 0.1" in str(err.value) and "bridge-llama 1.0.0" in str(err.value)


def test_an_override_settles_the_conflict_and_two_overrides_conflict():
    reg = Registry()
    reg.add_plugin(plugin(LLAMA), name="llama", distribution="bridge-llama")
    reg.add_plugin(plugin(HOSTILE), name="aaa", distribution="bridge-aaa")
    reg.add_plugin(plugin({**LLAMA, "bridge": "mine:Better", "override": True}), name="o", distribution="bridge-o")
    assert reg.bridge_for("LlamaForCausalLM").bridge == "mine:Better"
    reg.add_plugin(plugin({**LLAMA, "bridge": "theirs:Best", "override": True}), name="p", distribution="bridge-p")
    with pytest.raises(PluginError, match="registered with override=True by both bridge-o .* and bridge-p"):
        reg.bridge_for("LlamaForCausalLM")


@pytest.mark.parametrize("failure", [lambda: sys.exit(3), lambda: sys.exit("bye"), lambda: 1 / 0])
def test_a_hook_ending_the_interpreter_fails_only_its_plugin(failure):
    reg = Registry()
    rec = reg.add_plugin(plugin(LLAMA, in_hook=failure), name="bad", distribution="bridge-bad")
    assert rec.status == "failed" and "raised" in rec.reason
    assert reg.bridges == {}
    with pytest.raises(PluginError, match="plugin 'bad'"):
        reg.add_plugin(plugin(LLAMA, in_hook=failure), name="bad", distribution="bridge-bad", strict=True)


def test_ctrl_c_in_plugin_code_still_interrupts():
    def interrupt():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Registry().add_plugin(plugin(LLAMA, in_hook=interrupt), name="p")


class Exploding:
    def __init__(self, config):
        raise RuntimeError("boom")


class Exiting:
    def __init__(self, config):
        sys.exit(4)


class Refusing:
    def __init__(self, config):
        raise ConfigError("config.json: rope_type 'yarn' is not supported")


@pytest.mark.parametrize(("cls", "fragment"), [("Exploding", "RuntimeError: boom"), ("Exiting", "SystemExit")])
def test_a_bridge_failing_in_its_constructor_names_plugin_distribution_and_class(cls, fragment):
    reg = Registry()
    target = f"{__name__}:{cls}"
    reg.add_plugin(
        plugin({"architecture": "XForCausalLM", "bridge": target}), name="x", distribution="bridge-x", version="2.1"
    )
    with pytest.raises(PluginError) as err:
        reg.create_bridge("XForCausalLM", {})
    msg = str(err.value)
    assert msg.startswith(f"plugin 'x' (bridge-x 2.1): bridge {target} failed to start for XForCausalLM: ")
    assert fragment in msg and "\n" not in msg


def test_a_bridge_refusing_a_config_on_purpose_passes_its_error_through():
    reg = Registry()
    reg.add_plugin(plugin({"architecture": "XForCausalLM", "bridge": f"{__name__}:Refusing"}), name="x")
    with pytest.raises(ConfigError, match="rope_type 'yarn'"):
        reg.create_bridge("XForCausalLM", {})


def test_a_bridge_module_exiting_at_import_is_a_plugin_error(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    reg.add_plugin(plugin({"architecture": "XForCausalLM", "bridge": "exits_on_import:B"}), name="x")
    with pytest.raises(PluginError, match=r"fails to import: SystemExit \(sys.exit\(5\)\)"):
        reg.load_bridge_class("XForCausalLM")


def test_an_architecture_missing_from_the_installed_distribution_says_so():
    reg = Registry()
    qwen = {"architecture": "Qwen2ForCausalLM", "bridge": "bridge_qwen.qwen2:Qwen2Bridge"}
    reg.add_plugin(plugin(qwen), name="qwen", distribution="Bridge_Qwen", version="1.4.2")
    with pytest.raises(UnsupportedArchitectureError) as err:
        reg.bridge_for("Qwen2MoeForCausalLM")
    assert str(err.value).endswith("Qwen2MoeForCausalLM is not supported by the installed Bridge_Qwen 1.4.2")
    assert "pip install" not in str(err.value)


@pytest.mark.parametrize("value", ["maybe", "2", "enabled"])
def test_strict_plugins_refuses_values_it_does_not_understand(value):
    with pytest.raises(ConfigError, match=f"BRIDGE_STRICT_PLUGINS='{value}': expected 1/true/yes/on or 0/false/no/off"):
        is_strict({"BRIDGE_STRICT_PLUGINS": value})


@pytest.mark.parametrize(("value", "strict"), [("1", True), (" On ", True), ("", False), ("off", False), ("0", False)])
def test_strict_plugins_values_it_understands(value, strict):
    assert is_strict({"BRIDGE_STRICT_PLUGINS": value}) is strict


def test_a_shipped_family_not_installed_is_installed_from_the_wheelhouse():
    reg = Registry()  # no plugin at all: bridge-mixtral is shipped in this repository but not installed
    with pytest.raises(UnsupportedArchitectureError) as err:
        reg.bridge_for("MixtralForCausalLM")
    assert str(err.value).endswith(
        "MixtralForCausalLM: pip install --find-links dist bridge-mixtral (not on PyPI yet: build dist/ "
        "in a bridge checkout with python scripts/build_dists.py)"
    )
