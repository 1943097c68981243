"""Sharded safetensors writing with an index, fed one tensor at a time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from bridge_core.errors import ConfigError
from bridge_core.safetensors_io import INDEX_NAME

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: str | int) -> int:
    """``"5GB"`` -> 5e9 bytes (``GiB`` for powers of two), as transformers reads ``max_shard_size``."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"max shard size {value!r} is not a size like '5GB' or '500MiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def _owned(t: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """A contiguous CPU tensor owning its storage, not shared with another buffered one (safetensors
    refuses shared storage); copies only when needed."""
    t = t.detach().to("cpu")
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    if not whole or t.untyped_storage().data_ptr() in seen:
        t = t.contiguous().clone()
    seen.add(t.untyped_storage().data_ptr())
    return t


class ShardedSafetensorsWriter:
    """Buffers tensors up to ``max_shard_size`` bytes per file, writes HF-style shards and the index."""

    def __init__(self, folder: str | Path, max_shard_size: str | int = "5GB"):
        self.folder = Path(folder)
        self.max_bytes = parse_size(max_shard_size)
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[list[str]] = []
        self._names: set[str] = set()
        self._storages: set[int] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ValueError(f"tensor {name} written twice")
        self._names.add(name)
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_bytes:
            self._flush()
        self._buffer[name] = _owned(tensor, self._storages)
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._buffer:
            return
        save_file(self._buffer, str(self.folder / f".shard-{len(self._shards):05d}"), metadata={"format": "pt"})
        self._shards.append(list(self._buffer))
        self._buffer, self._buffer_bytes, self._storages = {}, 0, set()

    def finish(self) -> dict[str, str]:
        """Write the last shard, name every shard ``model-0000i-of-0000n.safetensors``, write the index."""
        self._flush()
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.folder / f".shard-{i:05d}").rename(self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return weight_map
