"""Old module paths (bridge-core 1.0's flat layout) as aliases of their new homes, with a DeprecationWarning.

``import bridge_core.registry`` returns the module ``bridge_core.plugins.registry`` itself (one object
under both names, so monkeypatching and ``isinstance`` see one module). Installed by ``bridge_core``'s
``__init__``; standard library only. Removed in bridge-core 2.0.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

# Old name under ``bridge_core.`` -> new name under ``bridge_core.``.
MOVED = {
    # plugins/
    "hookspecs": "plugins.hookspecs",
    "contract": "plugins.contract",
    "discovery": "plugins.discovery",
    "registry": "plugins.registry",
    "known_plugins": "plugins.known_plugins",
    # model/
    "bridge": "model.bridge",
    "decoder": "model.decoder",
    "provider": "model.provider",
    "config_translation": "model.config_translation",
    "mapping_registry": "model.mapping_registry",
    "hf_reference": "model.hf_reference",
    "quantization": "model.quantization",
    "mcore_versions": "model.mcore_versions",
    # checkpoints/
    "hf_checkpoint": "checkpoints.hf_checkpoint",
    "safetensors_io": "checkpoints.safetensors_io",
    "hf_writer": "checkpoints.hf_writer",
    "gguf_source": "checkpoints.gguf_source",
    "hub": "checkpoints.hub",
    "input_files": "checkpoints.input_files",
    "output_dir": "checkpoints.output_dir",
    "safe_pickle": "checkpoints.safe_pickle",
    "megatron_checkpoint": "checkpoints.megatron_checkpoint",
    "checkpoint_format": "checkpoints.checkpoint_format",
    "checkpoint_load": "checkpoints.checkpoint_load",
    "tokenizer_check": "checkpoints.tokenizer_check",
    # runtime/
    "parallel": "runtime.parallel",
    "parallelism": "runtime.parallelism",
    "parallel_checks": "runtime.parallel_checks",
    "ports": "runtime.ports",
    "cpu_support": "runtime.cpu_support",
    "inference": "runtime.inference",
    "generation": "runtime.generation",
    # conversion/
    "auto_bridge": "conversion.auto_bridge",
    "megatron_bridge_names": "conversion.megatron_bridge_names",
    "workflows": "conversion.workflows",
    # authoring/
    "scaffold": "authoring.scaffold",
    "mapping_table": "authoring.mapping_table",
    "diagnose": "authoring.diagnose",
}

# Names that left their module on the move: old module -> {name: new module}, forwarded with a warning.
MOVED_NAMES = {"registry": {"get_registry": "plugins.discovery", "reset_registry": "plugins.discovery"}}


def _forwarder(old: str, names: dict[str, str]) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        new = f"bridge_core.{names[name]}"
        warnings.warn(f"{old}.{name} moved to {new}.{name}; import it from there", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(new), name)

    return __getattr__


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        names = MOVED_NAMES.get(spec.name.partition(".")[2])
        if names and not hasattr(module, "__getattr__"):
            module.__getattr__ = _forwarder(spec.name, names)  # type: ignore[method-assign]
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported."""


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        prefix, _, old = fullname.partition(".")
        new = MOVED.get(old) if prefix == "bridge_core" else None
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(f"bridge_core.{new}"))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
