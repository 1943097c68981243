"""In-process plugin registration: atomic commits, duplicates, overrides, strict mode, lookups."""

from __future__ import annotations

import types

import pytest

from bridge_core import hookimpl
from bridge_core.errors import PluginError, UnsupportedArchitectureError
from bridge_core.plugins.discovery import _blocked_reason, normalize
from bridge_core.plugins.registry import Registry


def make_plugin(contract=">=1.0,<2", bridges=(), recipes=(), flops=(), raise_in_hook=None):
    def register_bridges(register):
        for kwargs in bridges:
            register(**kwargs)
        if raise_in_hook:
            raise raise_in_hook

    def register_recipes(register):
        for kwargs in recipes:
            register(**kwargs)

    def register_flops(register):
        for kwargs in flops:
            register(**kwargs)

    ns = types.ModuleType("fake_plugin")
    ns.register_bridges = hookimpl(register_bridges)
    ns.register_recipes = hookimpl(register_recipes)
    ns.register_flops = hookimpl(register_flops)
    if contract is not None:
        ns.BRIDGE_CONTRACT = contract
    return ns


A = {"architecture": "AForCausalLM", "bridge": "pkg_a.bridge:ABridge", "model_type": "a"}


def test_registration_records_the_distribution():
    reg = Registry()
    rec = reg.add_plugin(make_plugin(bridges=[A]), name="a", distribution="bridge-a", version="1.2.0")
    assert rec.status == "loaded" and rec.architectures == ["AForCausalLM"]
    entry = reg.bridge_for("AForCausalLM")
    assert (entry.bridge, entry.distribution, entry.version, entry.model_type) == (
        "pkg_a.bridge:ABridge",
        "bridge-a",
        "1.2.0",
        "a",
    )


def test_a_failing_hook_commits_nothing():
    reg = Registry()
    rec = reg.add_plugin(make_plugin(bridges=[A], raise_in_hook=ValueError("boom")), name="a")
    assert rec.status == "failed" and "ValueError: boom" in rec.reason
    assert reg.bridges == {} and rec.architectures == []


def test_second_registration_of_an_architecture_fails_naming_both():
    reg = Registry()
    reg.add_plugin(make_plugin(bridges=[A]), name="a", distribution="bridge-a", version="1.0")
    rec = reg.add_plugin(
        make_plugin(bridges=[A, {**A, "architecture": "B"}]), name="b", distribution="bridge-b", version="2.0"
    )
    assert rec.status == "failed"
    assert "bridge-a 1.0 and bridge-b 2.0" in rec.reason
    assert "B" not in reg.bridges and reg.bridges["AForCausalLM"].distribution == "bridge-a"


def test_override_replaces_and_later_plain_registration_is_shadowed():
    reg = Registry()
    reg.add_plugin(make_plugin(bridges=[A]), name="a", distribution="bridge-a")
    reg.add_plugin(make_plugin(bridges=[{**A, "bridge": "x.y:Z", "override": True}]), name="o", distribution="bridge-o")
    assert reg.bridges["AForCausalLM"].bridge == "x.y:Z"
    rec = reg.add_plugin(make_plugin(bridges=[A]), name="c", distribution="bridge-c")
    assert rec.status == "loaded" and reg.bridges["AForCausalLM"].distribution == "bridge-o"
    first, winner = reg.plugins[0], reg.plugins[1]
    assert (first.architectures, first.overridden) == ([], {"AForCausalLM": "bridge-o"})
    assert (winner.architectures, winner.overridden) == (["AForCausalLM"], {})
    assert (rec.architectures, rec.overridden) == ([], {"AForCausalLM": "bridge-o"})


def test_two_overrides_of_an_architecture_are_one_line_error_naming_both():
    reg = Registry()
    first, second = (make_plugin(bridges=[{**A, "override": True}]) for _ in range(2))
    reg.add_plugin(first, name="o", distribution="bridge-o", version="1.0")
    rec = reg.add_plugin(second, name="p", distribution="bridge-p", version="2.0")
    expected = "AForCausalLM is registered with override=True by both bridge-o 1.0 and bridge-p 2.0; uninstall one"
    assert (rec.status, rec.reason, rec.architectures) == ("failed", expected, [])
    with pytest.raises(PluginError) as err:
        reg.bridge_for("AForCausalLM")
    assert str(err.value) == expected


def test_strict_mode_raises():
    reg = Registry()
    with pytest.raises(PluginError, match="declares no BRIDGE_CONTRACT"):
        reg.add_plugin(make_plugin(contract=None, bridges=[A]), name="a", strict=True)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"architecture": "X", "bridge": "no_colon"}, "'module:attribute' string"),
        ({"architecture": "", "bridge": "a:B"}, "non-empty string"),
        ({"architecture": "X", "bridge": "a:B", "unknown": 1}, "unexpected keyword"),
    ],
)
def test_bad_bridge_registrations_fail_the_plugin(kwargs, fragment):
    rec = Registry().add_plugin(make_plugin(bridges=[kwargs]), name="p")
    assert rec.status == "failed" and fragment in rec.reason


def test_recipes_and_flops_are_recorded_and_validated():
    reg = Registry()
    rec = reg.add_plugin(
        make_plugin(
            recipes=[{"name": "r", "recipe": "m:f", "family": "a", "kind": "sft"}],
            flops=[{"block": "b", "function": "m:g"}],
        ),
        name="p",
    )
    assert rec.recipes == ["r"] and rec.flops == ["b"] and reg.recipes["r"].kind == "sft"
    bad = Registry().add_plugin(
        make_plugin(recipes=[{"name": "r", "recipe": "m:f", "family": "a", "kind": "rl"}]), name="q"
    )
    assert bad.status == "failed" and "kind must be one of pretrain, sft, peft" in bad.reason


def test_positional_register_call_is_refused():
    def register_bridges(register):
        register("AForCausalLM", "a:B")

    ns = types.ModuleType("positional_plugin")
    ns.BRIDGE_CONTRACT, ns.register_bridges = ">=1.0", hookimpl(register_bridges)
    rec = Registry().add_plugin(ns, name="p")
    assert rec.status == "failed" and "positional" in rec.reason


def test_load_bridge_class_reports_an_unimportable_target():
    reg = Registry()
    reg.add_plugin(make_plugin(bridges=[A]), name="a", distribution="bridge-a", version="1.0")
    with pytest.raises(PluginError, match="bridge-a 1.0 registers AForCausalLM as pkg_a.bridge:ABridge"):
        reg.load_bridge_class("AForCausalLM")


def test_unknown_architecture_lists_loaded_plugins():
    reg = Registry()
    reg.add_plugin(make_plugin(bridges=[A]), name="a", distribution="bridge-a", version="1.0")
    with pytest.raises(UnsupportedArchitectureError) as err:
        reg.bridge_for("LlamaForCausalLM")
    assert str(err.value) == (
        "LlamaForCausalLM is not supported by any loaded plugin (loaded: bridge-a 1.0); "
        "LlamaForCausalLM: pip install --find-links dist bridge-llama (not on PyPI yet: build dist/ in a bridge "
        "checkout with python scripts/build_dists.py)"
    )


def test_selection_variables():
    assert normalize("Bridge_Qwen.x") == "bridge-qwen-x"
    assert _blocked_reason("qwen", "bridge-qwen", {}) is None
    assert "not selected" in _blocked_reason("qwen", "bridge-qwen", {"BRIDGE_PLUGINS": ""})
    assert _blocked_reason("qwen", "bridge-qwen", {"BRIDGE_PLUGINS": "llama, BRIDGE_QWEN"}) is None
    assert "blocked by" in _blocked_reason("qwen", "bridge-qwen", {"BRIDGE_DISABLE_PLUGINS": "qwen"})


@pytest.mark.parametrize("architecture", ["NemotronHForCausalLM", "Qwen2_5_VLForConditionalGeneration"])
def test_an_architecture_no_published_plugin_serves_gets_no_pip_line(architecture):
    with pytest.raises(UnsupportedArchitectureError) as err:
        Registry().bridge_for(architecture)
    assert str(err.value) == (
        f"{architecture} is not supported by any loaded plugin (loaded: none); "
        f"{architecture}: no plugin for it is published yet (write one with 'bridgectl new-plugin')"
    )
    assert "pip install" not in str(err.value) and "bridge-nemotron" not in str(err.value)


def test_known_plugins_map_only_to_shipped_distributions():
    from bridge_core.plugins.known_plugins import KNOWN_ARCHITECTURES, NOT_PUBLISHED, SHIPPED

    assert set(KNOWN_ARCHITECTURES.values()) <= SHIPPED
    assert not NOT_PUBLISHED & set(KNOWN_ARCHITECTURES)
