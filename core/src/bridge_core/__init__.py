"""bridge-core: Hugging Face <-> Megatron-Core conversion with model families as plugins.

Importing this package is cheap: it imports no torch, megatron or transformers, and does not
discover plugins. The conversion API (``AutoBridge`` and friends) is imported on first use. The names
below are the public surface; the subpackages (see docs/architecture.md) are the library's internals.
"""

from __future__ import annotations

import importlib
from typing import Any

from bridge_core import _moved
from bridge_core.plugins.contract import CONTRACT_VERSION
from bridge_core.plugins.hookspecs import hookimpl

_moved.install()  # the flat 1.0 module paths (``bridge_core.registry``, ...) keep importing, deprecated

__version__ = "1.1.0"

# Public name -> "module:attribute", imported on first access (PEP 562).
_LAZY = {
    "AutoBridge": "bridge_core.conversion.auto_bridge:AutoBridge",
    "MegatronModelBridge": "bridge_core.model.bridge:MegatronModelBridge",
    "GPTModelProvider": "bridge_core.model.provider:GPTModelProvider",
    "MegatronMappingRegistry": "bridge_core.model.mapping_registry:MegatronMappingRegistry",
    "get_registry": "bridge_core.plugins.discovery:get_registry",
}

__all__ = ["CONTRACT_VERSION", "__version__", "hookimpl", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'bridge_core' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
