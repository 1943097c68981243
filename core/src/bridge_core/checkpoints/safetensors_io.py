"""Streaming safetensors reads: a lazy checkpoint reader (the writer is ``checkpoints.hf_writer``).

The reader parses every shard's header up front (names, shapes, dtypes, byte ranges; corrupt and
truncated files are caught here, before any weight is read), then reads each tensor on demand with
plain file I/O (one handle per file, ``readinto`` a freshly allocated tensor, or rows straight into a
caller's tensor). Nothing is memory mapped, so the page cache of the shards does not count in the
process's resident memory. Pickle files are never loaded.
"""

from __future__ import annotations

import ctypes
import io
import json
import operator
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from bridge_core.checkpoints.input_files import check_input_file, check_regular
from bridge_core.errors import CheckpointError, MissingTensorError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
# Read as ``safe_open`` reads them, but left as strings in ``TensorMeta`` (the conversion plan refuses those).
_READ_ONLY_DTYPES = {
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
}
_READ_DTYPES: dict[str, torch.dtype] = {
    **DTYPES,
    **{k: getattr(torch, v) for k, v in _READ_ONLY_DTYPES.items() if hasattr(torch, v)},
}


@dataclass(frozen=True)
class TensorMeta:
    """Where a tensor lives and what it is, from the safetensors header alone."""

    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype | str

    @property
    def nbytes(self) -> int:
        if isinstance(self.dtype, str):
            return 0
        return int(torch.Size(self.shape).numel()) * torch.empty((), dtype=self.dtype).element_size()


def read_header(path: Path) -> dict[str, TensorMeta]:
    """Parse and validate one safetensors file's header (no tensor data is read)."""
    return _read_header(path)[0]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``json.loads`` ``object_pairs_hook`` refusing a key given twice (instead of "last wins")."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _read_header(path: Path) -> tuple[dict[str, TensorMeta], dict[str, tuple[int, int]]]:
    """``read_header``, plus each tensor's absolute byte range ``[start, stop)`` in the file.

    As safetensors itself: no key twice, and the tensors' byte ranges tile the data section exactly
    (no overlap, no gap, nothing after the last tensor).
    """
    check_regular(path, "safetensors file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n), object_pairs_hook=unique_keys)
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    out: dict[str, TensorMeta] = {}
    ranges: dict[str, tuple[int, int]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            shape, dtype = tuple(info["shape"]), info["dtype"]
            if not isinstance(dtype, str) or not all(_is_int(d) and d >= 0 for d in shape):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name}") from None
        if not (_is_int(begin) and _is_int(stop) and 0 <= begin <= stop):
            raise CheckpointError(
                f"{path}: corrupt safetensors header entry for {name} (data_offsets [{begin}, {stop}])"
            )
        if dtype in _READ_DTYPES:
            need = int(torch.Size(shape).numel()) * _READ_DTYPES[dtype].itemsize
            if stop - begin != need:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header entry for {name} (data_offsets [{begin}, {stop}] "
                    f"hold {stop - begin} bytes, a {dtype} tensor of shape {list(shape)} needs {need})"
                )
        out[name] = TensorMeta(path.name, shape, DTYPES.get(dtype, dtype))
        ranges[name] = (8 + n + begin, 8 + n + stop)
    for name, (begin, stop) in sorted(ranges.items(), key=lambda item: item[1]):
        if begin - 8 - n != end:
            problem = "overlaps the tensor before it" if begin - 8 - n < end else "leaves a gap before it"
            raise CheckpointError(
                f"{path}: corrupt safetensors header entry for {name} (data_offsets "
                f"[{begin - 8 - n}, {stop - 8 - n}] {problem})"
            )
        end = stop - 8 - n
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end}); "
            "re-download or re-export it"
        )
    if 8 + n + end < size:
        raise CheckpointError(
            f"{path}: corrupt safetensors file ({size - 8 - n - end} bytes after the last tensor's data)"
        )
    return out, ranges


_SEEK_LOCK = threading.Lock()


def memory_of(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, in place, as a flat ``memoryview`` that keeps the tensor
    alive. Made without numpy: ``tensor.numpy()`` marks the storage non-resizable, and the streaming
    conversion resizes storages to free or reuse them once written."""
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(b"")
    array = (ctypes.c_char * nbytes).from_address(tensor.data_ptr())
    array._tensor = tensor
    return memoryview(array).cast("B")


def _pread_into(f: io.FileIO, view: memoryview, offset: int) -> int:
    """``readinto`` at ``offset`` without moving a shared file position (safe from several threads)."""
    if hasattr(os, "preadv"):
        return os.preadv(f.fileno(), [view], offset)
    with _SEEK_LOCK:  # platforms without preadv: one reader at a time
        f.seek(offset)
        return f.readinto(view)


def _check_shard_name(folder: Path, name: object, index_path: Path) -> Path:
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or Path(name).is_absolute()
    ):
        raise CheckpointError(f"{index_path}: shard name {name!r} is not a plain file name inside {folder}; refused")
    return folder / name


def read_weight_map(folder: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from ``folder``'s safetensors index (checked; the shards are not read)."""
    index_path = folder / INDEX_NAME
    check_input_file(index_path, folder, "safetensors index")
    try:
        index = json.loads(index_path.read_text(), object_pairs_hook=unique_keys)
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (ValueError, KeyError, AssertionError, TypeError) as exc:
        why = f" ({exc})" if isinstance(exc, ValueError) else ""
        raise CheckpointError(
            f"{index_path}: not a valid safetensors index (needs a 'weight_map' object){why}"
        ) from None
    for key, name in weight_map.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{index_path}: weight_map entry {key!r} is {name!r}, not a shard file name")
    return weight_map


class SafetensorsCheckpoint(Mapping[str, torch.Tensor]):
    """The tensors of an HF folder (``model.safetensors`` or an index with shards), read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta: dict[str, TensorMeta] = {}
        self.index_path = self.folder / INDEX_NAME
        self._ranges: dict[str, tuple[int, int]] = {}
        files = self._shard_files()
        headers = {name: _read_header(path) for name, path in files.items()}
        if self._weight_map is None:
            for file_name, (header, ranges) in headers.items():
                for key, meta in header.items():
                    if key in self.meta:
                        raise CheckpointError(
                            f"{self.folder}: tensor {key} appears in {self.meta[key].file} and {file_name}"
                        )
                    self.meta[key] = meta
                    self._ranges[key] = ranges[key]
        else:
            for key, file_name in self._weight_map.items():
                header, ranges = headers[file_name]
                if key not in header:
                    raise CheckpointError(f"{self.index_path}: {key} is listed in {file_name}, which does not hold it")
                self.meta[key] = header[key]
                self._ranges[key] = ranges[key]
            for file_name, (header, _) in headers.items():
                unlisted = [key for key in header if self._weight_map.get(key) != file_name]
                if unlisted:
                    raise CheckpointError(
                        f"{self.folder / file_name}: holds tensor {unlisted[0]}, which {self.index_path} does not "
                        f"list for this shard ({len(unlisted)} such tensor(s)); it would be dropped"
                    )
        self._handles: dict[str, io.FileIO] = {}
        self._lock = threading.Lock()  # reads may come from several threads (positional, no shared offset)

    def _shard_files(self) -> dict[str, Path]:
        self._weight_map: dict[str, str] | None = None
        if os.path.lexists(self.index_path):
            weight_map = read_weight_map(self.folder)
            files = {}
            for name in sorted(set(weight_map.values()), key=str):
                path = _check_shard_name(self.folder, name, self.index_path)
                if not os.path.lexists(path):
                    raise CheckpointError(f"{self.index_path}: shard {name} is missing from {self.folder}")
                files[name] = check_input_file(path, self.folder, "shard")
            self._weight_map = weight_map
            return files
        files = {p.name: check_input_file(p, self.folder, "shard") for p in sorted(self.folder.glob("*.safetensors"))}
        if not files:
            pickles = sorted(p.name for p in self.folder.glob("*.bin")) + sorted(
                p.name for p in self.folder.glob("*.pt")
            )
            hint = (
                f" (found {', '.join(pickles)}: pickle checkpoints are not loaded; convert them to safetensors)"
                if pickles
                else ""
            )
            raise CheckpointError(f"{self.folder}: no *.safetensors weights{hint}")
        return files

    # -- Mapping interface ----------------------------------------------------------------------
    def __getitem__(self, key: str) -> torch.Tensor:
        return self.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.meta)

    def __len__(self) -> int:
        return len(self.meta)

    def __contains__(self, key: object) -> bool:
        return key in self.meta

    # -- reading --------------------------------------------------------------------------------
    def _handle(self, file_name: str) -> io.FileIO:
        handle = self._handles.get(file_name)
        if handle is None:
            with self._lock:
                handle = self._handles.get(file_name)
                if handle is None:
                    path = self.folder / file_name
                    try:
                        handle = io.FileIO(path, "r")
                    except OSError as exc:
                        raise CheckpointError(f"{path}: cannot open ({exc})") from None
                    self._handles[file_name] = handle
        return handle

    def _locate(self, key: str) -> tuple[TensorMeta, torch.dtype, int, int]:
        meta = self.meta.get(key)
        if meta is None:
            raise MissingTensorError(f"{self.folder}: tensor {key} is not in the checkpoint")
        dtype = _READ_DTYPES.get(meta.dtype, meta.dtype) if isinstance(meta.dtype, str) else meta.dtype
        if isinstance(dtype, str):
            raise CheckpointError(f"{self.folder / meta.file}: cannot read {key} (dtype {dtype} is not supported)")
        start, stop = self._ranges[key]
        return meta, dtype, start, stop

    def _read(self, file_name: str, key: str, start: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` bytes at ``start`` of ``file_name``, read into a new uint8 tensor (no memory map)."""
        out = torch.empty(nbytes, dtype=torch.uint8)
        self._read_into(file_name, key, start, out)
        return out

    def _read_into(self, file_name: str, key: str, start: int, out: torch.Tensor) -> None:
        """Fill the contiguous uint8 tensor ``out`` with the bytes at ``start`` of ``file_name``."""
        nbytes = out.numel()
        if nbytes == 0:
            return
        f = self._handle(file_name)
        view = memory_of(out)
        got = 0
        try:
            while got < nbytes:
                n = _pread_into(f, view[got:], start + got)
                if not n:
                    raise CheckpointError(
                        f"{self.folder / file_name}: truncated safetensors file (it ends inside {key}, "
                        f"at byte {start + got}); re-download or re-export it"
                    )
                got += n
        except OSError as exc:
            raise CheckpointError(f"{self.folder / file_name}: cannot read {key} ({exc})") from None
        finally:
            view.release()

    def read_rows_into(self, key: str, first_row: int, out: torch.Tensor) -> int:
        """Read rows ``first_row ...`` of ``key`` (dim 0) straight into ``out``; returns the bytes read.

        ``out`` must be contiguous, of the tensor's dtype, and hold whole rows that exist in the file.
        """
        meta, dtype, start, stop = self._locate(key)
        rows = meta.shape[0] if meta.shape else 0
        row_bytes = (stop - start) // rows if rows else 0
        nbytes = out.numel() * out.element_size()
        if (
            out.dtype != dtype
            or not out.is_contiguous()
            or not row_bytes
            or nbytes % row_bytes
            or first_row < 0
            or first_row * row_bytes + nbytes > stop - start
        ):
            raise ValueError(
                f"{self.folder / meta.file}: cannot read {tuple(out.shape)} {out.dtype} from row {first_row} "
                f"of {key} ({list(meta.shape)} {dtype})"
            )
        self._read_into(meta.file, key, start + first_row * row_bytes, out.detach().reshape(-1).view(torch.uint8))
        return nbytes

    def get_tensor(self, key: str) -> torch.Tensor:
        """Read one tensor into fresh memory (the file handle is opened once and reused)."""
        meta, dtype, start, stop = self._locate(key)
        if start == stop:
            return torch.empty(meta.shape, dtype=dtype)
        return self._read(meta.file, key, start, stop - start).view(dtype).reshape(meta.shape)

    def get_slice(self, key: str, index: int) -> torch.Tensor:
        """Read ``tensor[index]`` without reading the rest (stacked expert tensors).

        An integer index reads one row of the first dimension; any other index reads the whole tensor.
        """
        meta, dtype, start, stop = self._locate(key)
        try:
            i = operator.index(index)
        except TypeError:
            return self.get_tensor(key)[index]
        rows = meta.shape[0] if meta.shape else 0
        if not -rows <= i < rows:
            raise IndexError(
                f"{self.folder / meta.file}: index {index} is out of range for {key} of shape {list(meta.shape)}"
            )
        i %= rows
        row_bytes = (stop - start) // rows
        row = self._read(meta.file, key, start + i * row_bytes, row_bytes)
        return row.view(dtype).reshape(meta.shape[1:])

    @property
    def total_bytes(self) -> int:
        return sum(m.nbytes for m in self.meta.values())

    def close(self) -> None:
        """Close the open file handles (a later read opens them again)."""
        handles, self._handles = list(self._handles.values()), {}
        for handle in handles:
            handle.close()
