"""Discovery, isolation and the listing, end to end through the installed ``bridgectl``."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import plugins_json, run_bridgectl

from bridge_core import CONTRACT_VERSION

REPO = Path(__file__).resolve().parents[1]
CORE = version("bridge-core")  # the installed distribution's own metadata

REAL_PLUGINS = pytest.mark.needs_dists("bridge-llama", "bridge-qwen")


@REAL_PLUGINS
def test_every_plugin_is_listed_with_its_status():
    plugins = plugins_json()
    # fixture-good and fixture-duplicate register one architecture: the one discovered second fails
    # (entry points are sorted by name), and fixture-override then takes the architecture from the first
    assert plugins["fixture-duplicate"]["status"] == "loaded"
    assert plugins["fixture-good"]["status"] == "failed"
    assert "registered by both" in plugins["fixture-good"]["reason"]
    assert plugins["fixture-override"]["architectures"] == ["GoodForCausalLM"]
    assert plugins["fixture-duplicate"]["overridden"] == {"GoodForCausalLM": "bridge-fixture-override"}
    assert plugins["fixture-lazy"]["status"] == "loaded"
    assert plugins["fixture-broken"]["status"] == "failed"
    assert plugins["fixture-incompatible"]["status"] == "incompatible"
    assert plugins["fixture-typo"]["status"] == "failed"
    assert plugins["llama"]["status"] == "loaded"
    assert plugins["qwen"]["status"] == "loaded"


@REAL_PLUGINS
def test_real_plugins_register_their_architectures():
    plugins = plugins_json(BRIDGE_PLUGINS="bridge-llama,bridge-qwen")
    assert set(plugins["llama"]["architectures"]) >= {"LlamaForCausalLM", "MistralForCausalLM"}
    assert set(plugins["qwen"]["architectures"]) >= {"Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"}
    assert plugins["llama"]["distribution"] == "bridge-llama"
    assert plugins["qwen"]["contract"] == ">=1.1,<2"  # its recipes need the 1.1 recipe contract


def test_good_plugin_listing_has_registrations_and_identity():
    good = plugins_json(BRIDGE_PLUGINS="fixture-good")["fixture-good"]
    assert good["status"] == "loaded"
    assert good["distribution"] == "bridge-fixture-good"
    assert good["version"] == "0.3.1"
    assert good["entry_point"] == "fixture_good.plugin"
    assert good["architectures"] == ["GoodForCausalLM"]
    assert good["recipes"] == ["good_tiny_pretrain"]
    assert good["flops"] == ["good_block"]


def test_broken_plugin_is_failed_with_its_reason_and_host_keeps_working():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-broken,fixture-good")
    assert proc.returncode == 0, proc.stderr
    assert "fixture-broken" in proc.stdout and "failed" in proc.stdout
    assert "RuntimeError: fixture-broken cannot import: simulated bug" in proc.stdout
    assert "GoodForCausalLM" in proc.stdout


def test_incompatible_plugin_message_names_the_fix():
    rec = plugins_json(BRIDGE_PLUGINS="fixture-incompatible")["fixture-incompatible"]
    assert rec["status"] == "incompatible"
    assert rec["reason"] == (
        f"bridge-fixture-incompatible 0.4.0 needs contract >=2.0; bridge-core {CORE} provides {CONTRACT_VERSION}: "
        "upgrade bridge-core, or pip install 'bridge-fixture-incompatible<0.4'"
    )
    assert rec["architectures"] == []


def test_misspelled_hook_is_an_error():
    rec = plugins_json(BRIDGE_PLUGINS="fixture-typo")["fixture-typo"]
    assert rec["status"] == "failed"
    assert "register_bridge" in rec["reason"] and "unknown hook" in rec["reason"]


def test_duplicate_architecture_names_both_distributions():
    plugins = plugins_json(BRIDGE_PLUGINS="fixture-good,fixture-duplicate")
    statuses = sorted(p["status"] for p in plugins.values() if p["name"] in ("fixture-good", "fixture-duplicate"))
    assert statuses == ["failed", "loaded"]
    failed = next(p for p in plugins.values() if p["status"] == "failed")
    assert "bridge-fixture-good 0.3.1" in failed["reason"] and "bridge-fixture-duplicate 0.2.0" in failed["reason"]
    assert "override=True" in failed["reason"]


def test_override_wins_without_error():
    plugins = plugins_json(BRIDGE_PLUGINS="fixture-good,fixture-override")
    good, override = plugins["fixture-good"], plugins["fixture-override"]
    assert (good["status"], good["reason"]) == ("loaded", "")
    assert (override["status"], override["reason"]) == ("loaded", "")
    # the winner serves the architecture; the overridden plugin no longer lists it as served
    assert override["architectures"] == ["GoodForCausalLM"]
    assert good["architectures"] == [] and good["overridden"] == {"GoodForCausalLM": "bridge-fixture-override"}
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-good,fixture-override")
    assert "overridden: GoodForCausalLM (served by bridge-fixture-override)" in proc.stdout


def test_override_serves_the_architecture_in_process(clean_plugin_env, monkeypatch):
    from bridge_core.plugins.discovery import get_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "fixture-good,fixture-override")
    served = get_registry().bridge_for("GoodForCausalLM")
    assert (served.bridge, served.distribution) == ("fixture_override.bridge:BetterBridge", "bridge-fixture-override")


@REAL_PLUGINS
def test_known_plugins_name_only_the_shipped_plugins_and_what_they_serve():
    from bridge_core.plugins.known_plugins import KNOWN_ARCHITECTURES, NOT_PUBLISHED, SHIPPED

    assert SHIPPED == {p.name for p in (REPO / "plugins").iterdir() if (p / "pyproject.toml").is_file()}
    plugins = plugins_json(BRIDGE_PLUGINS=",".join(sorted(SHIPPED)))
    served = {arch: p["distribution"] for p in plugins.values() for arch in p["architectures"]}
    installed = {p["distribution"] for p in plugins.values() if p["status"] == "loaded"}
    assert installed, plugins
    # every architecture a plugin installed here serves is known, and known for that distribution
    assert served == {a: d for a, d in KNOWN_ARCHITECTURES.items() if d in installed}
    assert not NOT_PUBLISHED & set(served)


@REAL_PLUGINS
def test_empty_selection_blocks_everything():
    plugins = plugins_json(BRIDGE_PLUGINS="")
    assert plugins and all(p["status"] == "blocked" for p in plugins.values())
    assert "not selected by BRIDGE_PLUGINS=''" in plugins["llama"]["reason"]


@REAL_PLUGINS
def test_selection_accepts_normalised_distribution_names():
    plugins = plugins_json(BRIDGE_PLUGINS=" Bridge_Fixture.Good ")
    assert plugins["fixture-good"]["status"] == "loaded"
    assert plugins["llama"]["status"] == "blocked"


@REAL_PLUGINS
def test_disable_blocks_named_plugins():
    plugins = plugins_json(BRIDGE_DISABLE_PLUGINS="fixture-broken,bridge-qwen")
    assert plugins["fixture-broken"]["status"] == "blocked"
    assert plugins["qwen"]["status"] == "blocked"
    assert "blocked by BRIDGE_DISABLE_PLUGINS" in plugins["qwen"]["reason"]
    assert plugins["llama"]["status"] == "loaded"


def test_strict_mode_reraises_as_one_line_error():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-broken", BRIDGE_STRICT_PLUGINS="1")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "fixture-broken" in lines[0] and "simulated bug" in lines[0]
    assert "Traceback" not in proc.stderr


def test_strict_mode_refuses_incompatible_plugin():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-incompatible", BRIDGE_STRICT_PLUGINS="1")
    assert proc.returncode != 0
    assert "upgrade bridge-core" in proc.stderr


@REAL_PLUGINS
def test_strict_mode_passes_when_every_selected_plugin_is_good():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-good,llama,qwen", BRIDGE_STRICT_PLUGINS="1")
    assert proc.returncode == 0, proc.stderr


def test_human_listing_shows_rows_and_reasons():
    proc = run_bridgectl("plugins", BRIDGE_PLUGINS="fixture-good,fixture-incompatible")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0] == f"bridge-core {CORE} (contract {CONTRACT_VERSION})"
    assert "PLUGIN" in proc.stdout and "STATUS" in proc.stdout
    assert "architectures: GoodForCausalLM" in proc.stdout
    assert "reason: bridge-fixture-incompatible 0.4.0 needs contract >=2.0" in proc.stdout


def test_version_flag_prints_core_and_contract():
    proc = run_bridgectl("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"bridge-core {CORE} (contract {CONTRACT_VERSION})"
