"""Helpers for the ecosystem tests: run ``bridgectl`` as users do, with a controlled environment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution

import pytest

PLUGIN_ENV = ("BRIDGE_PLUGINS", "BRIDGE_DISABLE_PLUGINS", "BRIDGE_STRICT_PLUGINS")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "needs_dists(*names): skip unless these distributions are installed (e.g. the real plugins)"
    )


def missing_distributions(names) -> list[str]:
    """The distributions of ``names`` that are not installed here."""
    missing = []
    for name in names:
        try:
            distribution(name)
        except PackageNotFoundError:
            missing.append(name)
    return missing


def pytest_runtest_setup(item):
    """Tests marked ``needs_dists`` skip, naming what is missing, when run without those packages."""
    for marker in item.iter_markers("needs_dists"):
        missing = missing_distributions(marker.args)
        if missing:
            pytest.skip(f"needs {', '.join(missing)} installed (tox -e ecosystem installs them)")


def run_bridgectl(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run the installed ``bridgectl`` script with the plugin variables given (others unset)."""
    exe = shutil.which("bridgectl", path=os.path.dirname(sys.executable)) or shutil.which("bridgectl")
    assert exe, "bridgectl is not installed in this environment"
    environ = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV}
    environ.update(env)
    return subprocess.run([exe, *args], capture_output=True, text=True, env=environ, timeout=120)


def plugins_json(**env: str) -> dict[str, dict]:
    """``bridgectl plugins --json`` as a dict keyed by entry-point name."""
    proc = run_bridgectl("plugins", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    return {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}


@pytest.fixture
def clean_plugin_env(monkeypatch):
    """In-process tests: no plugin variables, and a registry rediscovered from scratch."""
    from bridge_core.plugins.discovery import reset_registry

    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    reset_registry()
    yield
    reset_registry()
