"""Exceptions of bridge-core. Every message is one line naming the file, tensor or setting at fault."""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error bridge-core raises on purpose (the CLI prints these in one line)."""


class PluginError(BridgeError):
    """A plugin could not be loaded or registered (raised in strict mode, recorded otherwise)."""


class UnsupportedArchitectureError(BridgeError):
    """No installed plugin provides a bridge for the requested architecture."""


class ConfigError(BridgeError):
    """An HF config or provider setting that the bridge cannot translate faithfully."""


class CheckpointError(BridgeError):
    """A checkpoint folder or file that is missing, corrupt, unsafe or inconsistent."""


class MissingTensorError(CheckpointError, KeyError):
    """A tensor name that is not in the checkpoint (a ``KeyError`` too, as ``Mapping`` requires)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DataError(BridgeError):
    """A training data file or line that cannot be used (the message names the file and line)."""


class CoverageError(BridgeError):
    """Tensors that would be dropped, left uninitialised, filled twice or mis-shaped."""
