"""Sharded safetensors writing with an index, streamed one tensor at a time.

Nothing is buffered: each tensor's bytes go to disk when ``add`` receives it, straight from the
tensor's memory (views included, no clone). Two modes:

- **Planned** (``plan(entries)`` before the first ``add``, as the export does from its plan): shards,
  headers and every tensor's offset are fixed up front from names, shapes and dtypes; each tensor is
  written at its offset (``os.pwrite``), in any order, and a shard is fsynced and closed as soon as
  its last tensor is in.
- **Unplanned**: tensors are appended to a hidden data file per shard; when the shard is full (or at
  ``finish``) the header is written to the shard file and the data ranges are copied behind it
  in the kernel (``os.copy_file_range``), and the data file is removed.

Shards are written under hidden names and renamed to ``model-0000i-of-0000n.safetensors`` by
``finish``, which then writes ``model.safetensors.index.json`` and fsyncs the shards, the index and
the folder; a single shard is ``model.safetensors``, without an index (as ``save_pretrained``).
Files are valid safetensors: an 8-byte little-endian header length, the JSON header
(``__metadata__ {"format": "pt"}``, padded with spaces to 8 bytes), then the tensors' contiguous
little-endian bytes, ordered by element size so every tensor is aligned to its element size.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bridge_core.checkpoints.output_dir import fsync_path
from bridge_core.checkpoints.safetensors_io import INDEX_NAME, SINGLE_NAME, memory_of
from bridge_core.errors import CheckpointError
from bridge_core.sizes import parse_size

_ST_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
for _name, _code in (("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):
    if isinstance(getattr(torch, _name, None), torch.dtype):
        _ST_DTYPES[getattr(torch, _name)] = _code

_LITTLE_ENDIAN = sys.byteorder == "little"
_COPY_CHUNK = 64 * 2**20


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(torch.Size(shape).numel()) * _itemsize(dtype)


def _st_dtype(name: str, dtype: torch.dtype) -> str:
    try:
        return _ST_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"tensor {name}: dtype {dtype} cannot be stored in safetensors") from None


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, contiguous and little-endian, as a flat ``memoryview``.

    No copy for a contiguous CPU tensor (a view of a larger storage included): the view is
    reinterpreted as bytes (bf16 and float8 go through ``uint8``, which numpy has). A non-contiguous
    tensor is made contiguous (one copy of that tensor), a device tensor is brought to the CPU.
    """
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t.reshape(-1)
    size = flat.element_size()
    if not _LITTLE_ENDIAN and size > 1:
        swapped = flat.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[size]).numpy().byteswap()
        return memoryview(swapped.view("uint8"))
    return memory_of(flat)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.format != "B" else data
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _copy_range(src: int, dst: int, src_offset: int, length: int, dst_offset: int) -> None:
    """Copy ``length`` bytes between files at the given offsets (in the kernel where it can)."""
    while length > 0:
        try:
            n = os.copy_file_range(src, dst, min(length, _COPY_CHUNK), src_offset, dst_offset)
        except (AttributeError, OSError):
            n = 0
        if n <= 0:  # no copy_file_range here (or it refused): through a user-space buffer
            chunk = os.pread(src, min(length, _COPY_CHUNK), src_offset)
            if not chunk:
                raise OSError(f"unexpected end of data while copying {length} bytes")
            _pwrite_all(dst, memoryview(chunk), dst_offset)
            n = len(chunk)
        src_offset, dst_offset, length = src_offset + n, dst_offset + n, length - n


def safetensors_header(entries: Iterable[tuple[str, str, tuple[int, ...], int, int]]) -> bytes:
    """The size prefix and JSON header for ``(name, dtype code, shape, begin, end)`` entries, padded
    with spaces so that the data starts at a multiple of 8 bytes (as safetensors writes it)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    for name, code, shape, begin, end in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(len(text) + 8) % 8)
    return struct.pack("<Q", len(text)) + text


@dataclass
class _Slot:
    """Where one tensor goes: its shard, its byte range in the shard's data section, what it is."""

    shard: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0
    written: bool = False


@dataclass
class _Shard:
    names: list[str] = field(default_factory=list)
    nbytes: int = 0
    data_start: int = 0  # file offset of the data section (planned mode: size of the header)
    fd: int | None = None
    pending: int = 0  # planned mode: tensors not written yet


class ShardedSafetensorsWriter:
    """Streams tensors into HF-style shards of at most ``max_shard_size`` bytes and writes the index.

    ``plan(entries)`` (optional, before the first ``add``) fixes the layout from ``(name, shape,
    dtype)`` in the order the tensors will arrive; then ``add`` writes each tensor at its planned
    offset, in any order, and ``finish`` refuses a plan left incomplete. Without a plan the shards
    are split in arrival order. A tensor larger than ``max_shard_size`` gets a shard of its own.
    Use as a context manager (or call ``close``) so that an error leaves no open file behind; the
    partial files are removed then.
    """

    def __init__(self, folder: str | Path, max_shard_size: str | int = "5GB"):
        self.folder = Path(folder)
        self.max_bytes = parse_size(max_shard_size)
        self._slots: dict[str, _Slot] = {}
        self._shards: list[_Shard] = []
        self._planned = False
        self._finished = False
        self.total_bytes = 0

    # -- layout ------------------------------------------------------------------------------------
    def _shard_for(self, nbytes: int) -> int:
        """The shard a tensor of ``nbytes`` joins, in arrival order (a new one when it would overflow)."""
        if not self._shards or (self._shards[-1].names and self._shards[-1].nbytes + nbytes > self.max_bytes):
            self._shards.append(_Shard())
        return len(self._shards) - 1

    def plan(self, entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]]) -> None:
        """Fix every shard's content and header from ``(name, shape, dtype)`` (before any ``add``)."""
        if self._slots or self._shards:
            raise ValueError("plan() must come before the first add()")
        for name, shape, dtype in entries:
            if name in self._slots:
                raise ValueError(f"tensor {name} planned twice")
            shape = tuple(int(d) for d in shape)
            _st_dtype(name, dtype)
            nbytes = _nbytes(shape, dtype)
            index = self._shard_for(nbytes)
            shard = self._shards[index]
            shard.names.append(name)
            shard.nbytes += nbytes
            self._slots[name] = _Slot(index, dtype, shape)
            self.total_bytes += nbytes
        for shard in self._shards:
            self._lay_out(shard)
            shard.data_start = len(self._header(shard))
            shard.pending = len(shard.names)
        self._planned = True

    def _lay_out(self, shard: _Shard) -> None:
        """Data offsets: larger elements first (stable), so every tensor is aligned to its element size."""
        position = 0
        for name in sorted(shard.names, key=lambda n: -_itemsize(self._slots[n].dtype)):
            slot = self._slots[name]
            slot.begin, slot.end = position, position + _nbytes(slot.shape, slot.dtype)
            position = slot.end

    def _header(self, shard: _Shard) -> bytes:
        slots = sorted(((n, self._slots[n]) for n in shard.names), key=lambda item: item[1].begin)
        return safetensors_header((n, _st_dtype(n, s.dtype), s.shape, s.begin, s.end) for n, s in slots)

    def _path(self, index: int, suffix: str = "") -> Path:
        return self.folder / f".shard-{index:05d}{suffix}"

    # -- writing -----------------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` under ``name`` now (its bytes are not kept)."""
        if self._finished:
            raise ValueError("the writer is finished")
        if self._planned:
            self._add_planned(name, tensor)
        else:
            self._add_unplanned(name, tensor)

    def _add_planned(self, name: str, tensor: torch.Tensor) -> None:
        slot = self._slots.get(name)
        if slot is None:
            raise ValueError(f"tensor {name} is not in the plan")
        if slot.written:
            raise ValueError(f"tensor {name} written twice")
        if tuple(tensor.shape) != slot.shape or tensor.dtype != slot.dtype:
            raise ValueError(
                f"tensor {name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {slot.shape} {slot.dtype}"
            )
        shard = self._shards[slot.shard]
        if shard.fd is None:
            shard.fd = os.open(self._path(slot.shard), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(shard.fd, memoryview(self._header(shard)), 0)
        _pwrite_all(shard.fd, tensor_bytes(tensor), shard.data_start + slot.begin)
        slot.written = True
        shard.pending -= 1
        if shard.pending == 0:
            self._close_shard(shard)

    def _add_unplanned(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._slots:
            raise ValueError(f"tensor {name} written twice")
        dtype, shape = tensor.dtype, tuple(tensor.shape)
        _st_dtype(name, dtype)
        nbytes = _nbytes(shape, dtype)
        index = self._shard_for(nbytes)
        if index > 0 and self._shards[index - 1].fd is not None:
            self._assemble(index - 1)
        shard = self._shards[index]
        if shard.fd is None:
            shard.fd = os.open(self._path(index, ".data"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        _pwrite_all(shard.fd, tensor_bytes(tensor), shard.nbytes)
        self._slots[name] = _Slot(index, dtype, shape, shard.nbytes, shard.nbytes + nbytes, True)
        shard.names.append(name)
        shard.nbytes += nbytes
        self.total_bytes += nbytes

    def _assemble(self, index: int) -> None:
        """Unplanned mode: header + the data file's ranges in aligned order -> the shard file."""
        shard = self._shards[index]
        data_fd, shard.fd = shard.fd, None
        assert data_fd is not None, "only an open shard is assembled"
        arrived = {n: (self._slots[n].begin, self._slots[n].end) for n in shard.names}
        self._lay_out(shard)
        header = self._header(shard)
        try:
            shard.fd = fd = os.open(self._path(index), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _pwrite_all(fd, memoryview(header), 0)
            for name in shard.names:
                (begin, end), slot = arrived[name], self._slots[name]
                _copy_range(data_fd, fd, begin, end - begin, len(header) + slot.begin)
        finally:
            os.close(data_fd)
            self._path(index, ".data").unlink(missing_ok=True)
        self._close_shard(shard)

    def _close_shard(self, shard: _Shard) -> None:
        fd, shard.fd = shard.fd, None
        assert fd is not None, "only an open shard is closed"
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def finish(self) -> dict[str, str]:
        """Close the last shard, name every shard ``model-0000i-of-0000n.safetensors``, write the
        index, and fsync the shards, the index and the folder (one shard: ``model.safetensors``, no
        index). Returns ``{tensor name: shard file}``."""
        if self._planned:
            missing = [n for n, s in self._slots.items() if not s.written]
            if missing:
                more = f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""
                raise CheckpointError(
                    f"{self.folder}: {len(missing)} planned tensor(s) never arrived: {', '.join(missing[:8])}{more}"
                )
        elif self._shards and self._shards[-1].fd is not None:
            self._assemble(len(self._shards) - 1)
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(self._shards):
            final = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            self._path(i).rename(self.folder / final)
            weight_map.update({name: final for name in shard.names})
        if n == 1:  # one shard: model.safetensors and no index, as transformers' save_pretrained writes it
            fsync_path(self.folder)
            self._finished = True
            return weight_map
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        partial = self.folder / f".{INDEX_NAME}.partial"
        with open(partial, "w") as f:
            f.write(json.dumps(index, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        partial.rename(self.folder / INDEX_NAME)
        fsync_path(self.folder)
        self._finished = True
        return weight_map

    # -- cleanup -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Close open files; when not finished, remove the partial shard and data files."""
        for index, shard in enumerate(self._shards):
            if shard.fd is not None:
                os.close(shard.fd)
                shard.fd = None
            if not self._finished:
                self._path(index).unlink(missing_ok=True)
                self._path(index, ".data").unlink(missing_ok=True)

    def __enter__(self) -> ShardedSafetensorsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
