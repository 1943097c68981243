"""Discovery imports nothing heavy, never runs at import, and loads bridges lazily."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "megatron", "transformers", "safetensors")
REAL_PLUGINS = pytest.mark.needs_dists("bridge-llama", "bridge-qwen")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120)


def _assert_no_heavy(code: str, **env: str) -> str:
    check = code + f"\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    proc = _python(check, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_import_bridge_core_imports_nothing_heavy_and_discovers_nothing():
    out = _assert_no_heavy(
        "import bridge_core, sys\nassert 'bridge_core.plugins.discovery' not in sys.modules\n"
        "assert not any(m.startswith(('bridge_llama', 'fixture_')) for m in sys.modules)"
    )
    assert out == "[]"


def test_importtime_shows_no_heavy_module():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bridge_core"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if "|" in line}
    assert "bridge_core" in imported
    assert not imported & set(HEAVY)


@REAL_PLUGINS
def test_bridgectl_plugins_imports_nothing_heavy_even_with_real_plugins_loaded():
    out = _assert_no_heavy(
        "from bridge_core.cli.main import main\nassert main(['plugins', '--json']) == 0\n"
        "from bridge_core.plugins.discovery import get_registry\n"
        "assert get_registry().bridge_for('LlamaForCausalLM').distribution == 'bridge-llama'"
    )
    assert out == "[]"


def test_bridge_module_is_imported_only_when_used():
    proc = _python(
        "import os\nfrom bridge_core.plugins.discovery import get_registry\nreg = get_registry()\n"
        "assert 'FIXTURE_LAZY_IMPORTED' not in os.environ\n"
        "cls = reg.load_bridge_class('LazyForCausalLM')\n"
        "assert os.environ['FIXTURE_LAZY_IMPORTED'] == '1' and cls.__name__ == 'LazyBridge'\nprint('ok')",
        BRIDGE_PLUGINS="fixture-lazy",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_discovery_runs_once_per_process(clean_plugin_env, monkeypatch):
    from bridge_core.plugins import discovery

    calls = []
    real = discovery.discover
    monkeypatch.setattr(discovery, "discover", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = discovery.get_registry()
    assert discovery.get_registry() is first
    assert calls == [1]


def test_unknown_architecture_names_the_package_to_install(clean_plugin_env, monkeypatch):
    from bridge_core.errors import UnsupportedArchitectureError
    from bridge_core.plugins.discovery import get_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "fixture-good")
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_registry().bridge_for("NemotronHForCausalLM")
    msg = str(err.value)
    assert "loaded: bridge-fixture-good 0.3.1" in msg
    # a family this project does not ship yet gets no pip line (anyone could register the name)
    assert msg.endswith(
        "NemotronHForCausalLM: no plugin for it is published yet (write one with 'bridgectl new-plugin')"
    )


@REAL_PLUGINS
def test_unknown_architecture_of_a_failed_plugin_says_why(clean_plugin_env, monkeypatch):
    from bridge_core.errors import UnsupportedArchitectureError
    from bridge_core.plugins.discovery import get_registry

    monkeypatch.setenv("BRIDGE_DISABLE_PLUGINS", "qwen")
    with pytest.raises(UnsupportedArchitectureError) as err:
        get_registry().bridge_for("Qwen2ForCausalLM")
    assert "bridge-qwen 1.0.0 is installed but blocked: blocked by BRIDGE_DISABLE_PLUGINS" in str(err.value)


def test_architecture_nobody_knows_points_to_new_plugin(clean_plugin_env, monkeypatch):
    from bridge_core.errors import UnsupportedArchitectureError
    from bridge_core.plugins.discovery import get_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "")
    with pytest.raises(UnsupportedArchitectureError, match="bridgectl new-plugin"):
        get_registry().bridge_for("MadeUpForCausalLM")


@REAL_PLUGINS
def test_launcher_starts_ranks_without_importing_anything_heavy(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("1")
    commands = [
        ["import", "--hf-model", str(hf), "--megatron-path", str(tmp_path / "out"), "--tp", "2", "--workers", "2"],
        ["export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "exp"), "--tp", "2"],
    ]
    out = _assert_no_heavy(
        "import bridge_core.cli.launcher as launcher\nfrom bridge_core.cli.main import main\n"
        "started = []\nlauncher.spawn_ranks = lambda argv, world: started.append(world) or 0\n"
        f"for argv in {commands!r}:\n    assert main(argv) == 0\n"
        "assert started == [2, 2], started"
    )
    assert out == "[]"
