"""The conformance kit's pytest plugin: light to load, its fixtures, marker and header."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import importlib_metadata
import pytest

pytest_plugins = ["pytester"]

HEAVY = ("torch", "megatron", "transformers", "safetensors")


def test_registered_as_a_pytest11_entry_point():
    (ep,) = [e for e in importlib_metadata.entry_points(group="pytest11") if e.name == "bridge_core"]
    assert ep.value == "bridge_core.testing.pytest_plugin"


def test_loading_the_plugin_imports_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bridge_core.testing.pytest_plugin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "pytest" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_header_marker_and_isolated_registry(pytester):
    pytester.makepyfile(
        textwrap.dedent(
            """
            import types
            import pytest
            from bridge_core import hookimpl
            from bridge_core.plugins.discovery import get_registry

            def make_plugin():
                ns = types.ModuleType("inline_plugin")
                ns.BRIDGE_CONTRACT = ">=1.0,<2"
                ns.register_bridges = hookimpl(
                    lambda register: register(architecture="InlineForCausalLM", bridge="x.y:Bridge")
                )
                return ns

            @pytest.mark.gpu
            def test_marker_is_registered():
                pass

            def test_register_in_process(isolated_registry):
                record = isolated_registry.register(make_plugin(), name="inline")
                assert record.status == "loaded" and record.architectures == ["InlineForCausalLM"]
                assert get_registry() is isolated_registry.registry
                assert isolated_registry.bridge_for("InlineForCausalLM").bridge == "x.y:Bridge"

            def test_discovery_is_blocked(isolated_registry):
                import os
                assert os.environ["BRIDGE_PLUGINS"] == "" and isolated_registry.bridges == {}

            def test_bad_plugin_raises(isolated_registry):
                from bridge_core.errors import PluginError
                bad = make_plugin()
                bad.BRIDGE_CONTRACT = ">=2"
                with pytest.raises(PluginError, match="needs contract >=2"):
                    isolated_registry.register(bad, name="bad")
            """
        )
    )
    from bridge_core.plugins import discovery

    before = discovery._registry
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["bridge-core * (plugin contract *)"])
    assert discovery._registry is before


def test_toy_model_factory_caches_folders(toy_model_factory):
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_hidden_layers": 1,
        "intermediate_size": 64,
        "vocab_size": 100,
    }
    first = toy_model_factory(config)
    assert (first / "config.json").is_file() and list(first.glob("*.safetensors"))
    assert toy_model_factory(dict(config)) == first
    assert toy_model_factory(config, dtype="bfloat16") != first
    with pytest.raises(ValueError, match="needs an architecture"):
        toy_model_factory({k: v for k, v in config.items() if k != "architectures"})


def test_cpu_launcher_runs_ranks_on_gloo(cpu_launcher, tmp_path):
    script = tmp_path / "allreduce.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch, torch.distributed as dist
            assert not torch.cuda.is_available()
            dist.init_process_group("gloo")
            t = torch.ones(1) * (dist.get_rank() + 1)
            dist.all_reduce(t)
            print(f"rank {dist.get_rank()} sum {int(t.item())}")
            dist.destroy_process_group()
            """
        )
    )
    proc = cpu_launcher.run_script(script, nproc=2)
    assert "rank 0 sum 3" in proc.stdout and "rank 1 sum 3" in proc.stdout


def test_cpu_launcher_runs_cases_with_an_in_process_plugin(toy_model_factory, cpu_launcher, tmp_path):
    import torch

    from bridge_core.testing.compare import compare_hf_weights

    config = {
        "model_type": "llama",
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "intermediate_size": 64,
        "vocab_size": 100,
    }
    folder = toy_model_factory(config, "LlamaForCausalLM")
    ids = tmp_path / "ids.pt"
    torch.save(torch.randint(0, 100, (1, 8)), ids)
    case = {"name": "tp2", "hf_path": str(folder), "ids": str(ids), "out": str(tmp_path / "tp2"), "tp": 2}
    results = cpu_launcher.run_cases([case], tmp_path, plugin="_test_bridges", env={"BRIDGE_PLUGINS": ""})
    assert results["tp2"]["error"] is None, results["tp2"]["error"]
    assert compare_hf_weights(folder, results["tp2"]["hf"]) == []
