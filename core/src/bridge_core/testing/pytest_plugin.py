"""bridge-core's pytest plugin: fixtures and markers for plugin authors' tests.

pytest loads it through the ``pytest11`` entry point ``bridge_core`` wherever bridge-core is installed
(``-p no:bridge_core`` blocks it). Loading it imports pytest and the standard library only; torch,
transformers and megatron-core are imported when a fixture is first used.

Fixtures:
- ``toy_model_factory`` (session): ``make(config_or_toy, architecture=None, *, dtype=None, seed=None)``
  saves a tiny HF model folder (random weights) and returns its path; equal inputs give the same folder.
- ``cpu_launcher`` (session): a ``CpuLauncher`` that runs conversion cases or a module under torchrun
  on the CPU (gloo; CUDA hidden from the ranks), several processes on one machine.
- ``isolated_registry`` (function): an ``IsolatedRegistry``, a fresh plugin registry installed as the
  process registry with discovery blocked; ``.register(module_or_object, name=...)`` adds a plugin
  in-process. The previous registry is restored afterwards.

Marker: ``gpu`` (needs CUDA devices; tests skip themselves without enough of them).

``host_load_problems(entry_point)`` loads a plugin as the host does, next to every installed plugin,
and lists what would keep its bridges from being used (a failure, a conflicting architecture).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge_core.testing.launch import CPU_ENV  # the standard library only

# The conformance suite's assertions show their values when they fail.
pytest.register_assert_rewrite("bridge_core.testing.conformance")

GPU_MARKER = "gpu: needs CUDA devices; skipped when fewer are available than the test asks for"

_TOY_FACTORY = pytest.StashKey["ToyModelFactory"]()
_CLASS_CACHE = pytest.StashKey[dict]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", GPU_MARKER)


def pytest_report_header(config: pytest.Config) -> str:
    from bridge_core import CONTRACT_VERSION, __version__

    return f"bridge-core {__version__} (plugin contract {CONTRACT_VERSION})"


# -- toy models ---------------------------------------------------------------------------------
class ToyModelFactory:
    """Saves toy HF checkpoints on demand and caches them for the test session.

    ``factory(config)`` takes a config dict (with ``model_type``, and ``architectures`` unless
    ``architecture`` is given) or a ``ToyModel``; the folder holds ``config.json``, safetensors
    weights and a generation config, as ``bridge_core.testing.toy.build_toy`` writes them.
    """

    def __init__(self, mktemp: Callable[[str], Path]):
        self._mktemp = mktemp
        self._folders: dict[str, Path] = {}

    def __call__(
        self,
        config: Any,
        architecture: str | None = None,
        *,
        dtype: str | None = None,
        seed: int | None = None,
    ) -> Path:
        from bridge_core.testing.toy import build_toy

        toy = as_toy(config, architecture, dtype=dtype, seed=seed)
        key = json.dumps(
            [toy.architecture, toy.config, toy.dtype, toy.seed, sorted(toy.tags)], sort_keys=True, default=repr
        )
        folder = self._folders.get(key)
        if folder is None:
            slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{toy.model_type}-{toy.dtype}")[:40]
            folder = build_toy(toy, self._mktemp(f"toy-{slug}") / "hf")
            self._folders[key] = folder
        return folder


def as_toy(config: Any, architecture: str | None = None, *, dtype: str | None = None, seed: int | None = None):
    """A ``ToyModel`` from a ``ToyModel`` or a config dict (``architecture`` or ``config["architectures"]``)."""
    from dataclasses import replace

    from bridge_core.testing.toy import ToyModel

    if isinstance(config, ToyModel):
        toy = config
    elif isinstance(config, dict):
        values = dict(config)
        archs = values.pop("architectures", None)
        arch = architecture or (archs[0] if archs else None)
        if not arch:
            raise ValueError("toy config needs an architecture: pass architecture=... or an 'architectures' entry")
        if "model_type" not in values:
            raise ValueError(f"toy config for {arch} needs a 'model_type' entry")
        toy = ToyModel(arch, values)
    else:
        raise TypeError(f"expected a config dict or a ToyModel, got {type(config).__name__}")
    given = (("architecture", architecture), ("dtype", dtype), ("seed", seed))
    changes: dict[str, Any] = {k: v for k, v in given if v is not None}
    return replace(toy, **changes) if changes else toy


def session_toy_factory(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> ToyModelFactory:
    """The session's ``ToyModelFactory`` (shared by the fixture and ``BridgeConformance``)."""
    factory = config.stash.get(_TOY_FACTORY, None)
    if factory is None:
        factory = ToyModelFactory(lambda name: tmp_path_factory.mktemp(name))
        config.stash[_TOY_FACTORY] = factory
    return factory


def class_cache(config: pytest.Config) -> dict:
    """A per-session dict for results computed once per test class (keyed by the caller)."""
    cache = config.stash.get(_CLASS_CACHE, None)
    if cache is None:
        cache = config.stash[_CLASS_CACHE] = {}
    return cache


@pytest.fixture(scope="session")
def toy_model_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ToyModelFactory:
    """Config dict or ``ToyModel`` -> saved HF folder (random weights), cached for the session."""
    return session_toy_factory(request.config, tmp_path_factory)


# -- distributed launches on the CPU ------------------------------------------------------------
class CpuLauncher:
    """Runs work under ``torchrun`` on this machine's CPU: gloo, one process per rank, CUDA hidden.

    ``run_cases`` drives ``bridge_core.testing.dist_runner`` (HF -> Megatron at a parallel layout ->
    logits and an exported HF folder per case); ``run_module``/``run_script`` start anything else.
    """

    def __init__(self, mktemp: Callable[[str], Path], nproc: int = 2):
        self._mktemp = mktemp
        self.nproc = nproc

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Variables given to the ranks on top of this process's environment."""
        return {**CPU_ENV, **(env or {})}

    def run_cases(
        self,
        cases: list[dict],
        workdir: str | Path | None = None,
        *,
        nproc: int | None = None,
        env: dict[str, str] | None = None,
        plugin: str | None = None,
        timeout: float = 900,
    ) -> dict[str, dict]:
        """Run conversion ``cases`` (see ``dist_runner``) in one launch; ``{name: {"logits", "hf", "error"}}``.

        ``plugin`` names an importable entry-point module to register in-process on every rank
        instead of discovering the installed plugins.
        """
        from bridge_core.testing.launch import run_cases

        work = Path(workdir) if workdir is not None else self._mktemp("cases")
        work.mkdir(parents=True, exist_ok=True)
        if plugin is not None:
            spec = {"module": plugin, "path": _import_root(plugin)}
            cases = [{**case, "plugin": case.get("plugin", spec)} for case in cases]
        return run_cases(cases, work, nproc=nproc or self.nproc, timeout=timeout, env=self.environment(env))

    def run_module(
        self,
        module: str,
        *args: str,
        nproc: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 900,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """``torchrun -m module args...``; with ``check`` a failing launch fails the test with its output."""
        return self._run(["-m", module, *args], nproc, env, timeout, check)

    def run_script(
        self,
        path: str | Path,
        *args: str,
        nproc: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 900,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """``torchrun path args...`` (see ``run_module``)."""
        return self._run([str(path), *args], nproc, env, timeout, check)

    def _run(
        self, args: list[str], nproc: int | None, env: dict[str, str] | None, timeout: float, check: bool
    ) -> subprocess.CompletedProcess:
        from bridge_core.testing.launch import torchrun

        proc = torchrun(args, nproc or self.nproc, timeout=timeout, env=self.environment(env))
        if check and proc.returncode != 0:
            pytest.fail(
                f"torchrun {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
                f"\n--- stderr ---\n{proc.stderr[-6000:]}",
                pytrace=False,
            )
        return proc


def _import_root(module: str) -> str | None:
    """The ``sys.path`` entry a module is imported from (so ranks can import it too)."""
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is None or not spec.origin:
        return None
    top = Path(spec.origin).parent if spec.submodule_search_locations else Path(spec.origin)
    return str(top.parent)


@pytest.fixture(scope="session")
def cpu_launcher(tmp_path_factory: pytest.TempPathFactory) -> CpuLauncher:
    """Run conversion cases or a module under torchrun on the CPU (gloo), 2 ranks by default."""
    return CpuLauncher(lambda name: tmp_path_factory.mktemp(name))


# -- an isolated plugin registry ----------------------------------------------------------------
class IsolatedRegistry:
    """A fresh ``Registry`` used as the process registry while discovery is blocked.

    ``register(plugin, name=...)`` adds an entry-point module (or its name, or any object with
    hooks) in-process, with the same contract checks as discovery; strict by default, so a broken
    plugin raises ``PluginError``. Attributes of the ``Registry`` (``bridges``, ``plugins``,
    ``bridge_for`` ...) are available directly.
    """

    def __init__(self, registry: Any):
        self.registry = registry

    def register(
        self,
        plugin: Any,
        *,
        name: str | None = None,
        distribution: str | None = None,
        version: str = "0",
        strict: bool = True,
    ):
        """Register ``plugin`` (a module, a module name, or an object with hooks); returns its record."""
        if isinstance(plugin, str):
            plugin = importlib.import_module(plugin)
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        return self.registry.add_plugin(
            plugin, name=name, distribution=distribution or name, version=version, strict=strict
        )

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.registry, attr)


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[IsolatedRegistry]:
    """A fresh registry with discovery blocked (``BRIDGE_PLUGINS=""``); restored afterwards."""
    from bridge_core.plugins import discovery
    from bridge_core.plugins.registry import Registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "")
    monkeypatch.delenv("BRIDGE_DISABLE_PLUGINS", raising=False)
    previous = discovery._registry
    fresh = Registry()
    discovery.reset_registry(fresh)
    try:
        yield IsolatedRegistry(fresh)
    finally:
        discovery.reset_registry(previous)


# -- loading next to every installed plugin ------------------------------------------------------
PLUGIN_SELECTION_ENV = ("BRIDGE_PLUGINS", "BRIDGE_DISABLE_PLUGINS", "BRIDGE_STRICT_PLUGINS")


def host_load_problems(plugin: str) -> list[str]:
    """Why the host would not use entry point ``plugin``'s bridges, discovering as ``bridgectl`` does.

    Every installed plugin is discovered (no selection, not strict) into a fresh registry: the plugin
    failing to load, an architecture of it that another plugin also registers (an error where it is
    used), or one another plugin's override takes, is a problem. An empty list: it loads as tested.
    """
    from bridge_core.plugins.discovery import discover
    from bridge_core.plugins.registry import LOADED

    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_SELECTION_ENV}
    registry = discover(environ=env)
    records = [r for r in registry.plugins if r.name == plugin]
    if not records:
        return [f"no installed distribution has the entry point {plugin!r}"]
    problems = []
    for record in records:
        who = f"plugin {plugin!r} ({record.distribution} {record.version})"
        if record.status != LOADED:
            problems.append(f"{who} is {record.status} next to the installed plugins: {record.reason}")
            continue
        for arch in record.architectures:
            if arch in registry.conflicts:
                problems.append(registry.conflicts[arch])
            elif registry.bridges[arch].plugin != plugin:
                other = registry.bridges[arch]
                problems.append(f"{arch} of {who} is taken by {other.distribution} {other.version} (override=True)")
    return problems


__all__ = [
    "CpuLauncher",
    "IsolatedRegistry",
    "ToyModelFactory",
    "as_toy",
    "cpu_launcher",
    "host_load_problems",
    "isolated_registry",
    "toy_model_factory",
]
