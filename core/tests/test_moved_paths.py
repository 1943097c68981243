"""The flat 1.0 module paths still import, as the moved module itself, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import bridge_core
from bridge_core._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module_and_warns(old, monkeypatch):
    monkeypatch.delitem(sys.modules, f"bridge_core.{old}", raising=False)
    assert not (Path(bridge_core.__file__).parent / f"{old}.py").exists(), f"{old}.py would shadow the alias"
    with pytest.warns(DeprecationWarning, match=rf"bridge_core\.{old} moved to bridge_core\.{MOVED[old]}"):
        module = importlib.import_module(f"bridge_core.{old}")
    assert module is importlib.import_module(f"bridge_core.{MOVED[old]}")


def test_from_imports_and_monkeypatching_see_one_module(monkeypatch):
    monkeypatch.delitem(sys.modules, "bridge_core.registry", raising=False)
    monkeypatch.delattr(bridge_core, "registry", raising=False)  # set by an earlier import of the old path
    with pytest.warns(DeprecationWarning):
        from bridge_core import registry as old
    from bridge_core.plugins import registry as new
    from bridge_core.plugins.registry import Registry

    assert old is new and isinstance(old.Registry(), Registry)
    monkeypatch.setattr(old, "RECIPE_KINDS", ("pretrain",))
    assert new.RECIPE_KINDS == ("pretrain",)


def test_the_process_wide_registry_is_still_reachable_where_it_was():
    from bridge_core.plugins import discovery

    with pytest.warns(DeprecationWarning, match=r"registry\.get_registry moved to bridge_core\.plugins\.discovery"):
        from bridge_core.registry import get_registry
    assert get_registry is discovery.get_registry
    with pytest.raises(ImportError, match="no_such_name"):
        from bridge_core.registry import no_such_name  # noqa: F401


def test_an_unknown_old_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError, match="bridge_core.no_such_module"):
        importlib.import_module("bridge_core.no_such_module")


def test_old_paths_import_no_torch_for_the_plugin_system():
    code = "import sys, bridge_core.registry, bridge_core.hookspecs; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    assert "bridge_core.hookspecs moved to bridge_core.plugins.hookspecs" in proc.stderr
