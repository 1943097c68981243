"""Hostile or buggy plugins, end to end: sys.exit at import, printing, conflicts, a bridge that fails to start."""

from __future__ import annotations

import json

import pytest
from conftest import plugins_json, run_bridgectl

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 256,
}


def test_a_plugin_calling_sys_exit_at_import_fails_alone():
    proc = run_bridgectl("plugins", "--json", BRIDGE_PLUGINS="fixture-exits,fixture-good")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert plugins["fixture-exits"]["status"] == "failed"
    assert plugins["fixture-exits"]["reason"] == "importing fixture_exits.plugin failed: SystemExit (sys.exit(3))"
    assert plugins["fixture-good"]["status"] == "loaded"


def test_strict_mode_reports_a_plugin_calling_sys_exit_in_one_line():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-exits", BRIDGE_STRICT_PLUGINS="1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bridgectl plugins: error: plugin 'fixture-exits' (bridge-fixture-exits 0.1.0): "
        "importing fixture_exits.plugin failed: SystemExit (sys.exit(3))"
    )


def test_a_plugin_printing_keeps_stdout_for_the_json():
    proc = run_bridgectl("plugins", "--json", BRIDGE_PLUGINS="fixture-noisy")
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}  # stdout is the JSON alone
    assert plugins["fixture-noisy"]["status"] == "loaded"
    assert "fixture-noisy: hello from import" in proc.stderr
    assert "fixture-noisy: hello from register_bridges" in proc.stderr


def test_every_plugin_still_listed_with_all_fixtures_installed():
    plugins = plugins_json()  # no selection: the exiting and printing fixtures load too
    assert plugins["fixture-exits"]["status"] == "failed"
    assert plugins["fixture-noisy"]["status"] == "loaded" and plugins["llama"]["status"] == "loaded"


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_strict_plugins_value_not_understood_is_refused(value):
    proc = run_bridgectl("plugins", BRIDGE_STRICT_PLUGINS=value)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"bridgectl plugins: error: BRIDGE_STRICT_PLUGINS='{value}': "
        "expected 1/true/yes/on or 0/false/no/off (or unset)"
    )


def test_a_plugin_sorting_before_llama_cannot_take_over_its_architecture(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(LLAMA_CONFIG))
    env = {"BRIDGE_PLUGINS": "early,llama", "BRIDGE_FIXTURE_EARLY_TAKES": "LlamaForCausalLM"}
    proc = run_bridgectl("import", "--hf-model", str(hf), "--megatron-path", str(tmp_path / "out"), **env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bridgectl import: error: LlamaForCausalLM is registered by both bridge-fixture-early 0.1.0 and "
        "bridge-llama 1.0.0; uninstall one, or register with override=True"
    )
    assert not (tmp_path / "out").exists()


def test_a_bridge_failing_in_its_constructor_is_named(clean_plugin_env, monkeypatch):
    from bridge_core.errors import PluginError
    from bridge_core.plugins.discovery import get_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "fixture-noisy")
    with pytest.raises(PluginError) as err:
        get_registry().create_bridge("NoisyForCausalLM", None)
    assert str(err.value) == (
        "plugin 'fixture-noisy' (bridge-fixture-noisy 0.1.0): bridge fixture_noisy.bridge:NoisyBridge failed to "
        "start for NoisyForCausalLM: RuntimeError: the noisy bridge is broken"
    )


def test_the_conformance_kit_fails_a_plugin_whose_architecture_another_installed_plugin_serves(monkeypatch):
    from bridge_core.testing.pytest_plugin import host_load_problems

    for name in ("BRIDGE_PLUGINS", "BRIDGE_STRICT_PLUGINS"):  # as a plugin's own tox env would set them
        monkeypatch.setenv(name, {"BRIDGE_PLUGINS": "early"}.get(name, "1"))
    assert host_load_problems("early") == []
    monkeypatch.setenv("BRIDGE_FIXTURE_EARLY_TAKES", "LlamaForCausalLM")
    conflict = (
        "LlamaForCausalLM is registered by both bridge-fixture-early 0.1.0 and bridge-llama 1.0.0; "
        "uninstall one, or register with override=True"
    )
    assert host_load_problems("early") == [conflict]  # its own tests pass; the host would refuse it
    (problem,) = host_load_problems("llama")
    assert problem.startswith("plugin 'llama' (bridge-llama 1.0.0) is failed next to the installed plugins: ")
    assert problem.endswith(conflict)


def test_the_conformance_kit_names_a_plugin_that_is_not_installed():
    from bridge_core.testing.pytest_plugin import host_load_problems

    assert host_load_problems("no-such-plugin") == ["no installed distribution has the entry point 'no-such-plugin'"]
