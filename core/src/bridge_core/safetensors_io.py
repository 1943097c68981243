"""Streaming safetensors I/O: a lazy checkpoint reader and a sharded, atomic writer.

The reader parses every shard's header up front (names, shapes, dtypes; corrupt and truncated files
are caught here, before any weight is read), then reads tensors on demand with one ``safe_open``
handle per file. Pickle files are never loaded.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

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
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a file of {size} bytes")
            header = json.loads(f.read(n))
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    out: dict[str, TensorMeta] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            shape, dtype = tuple(int(d) for d in info["shape"]), info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for {name}") from None
        end = max(end, stop)
        out[name] = TensorMeta(path.name, shape, DTYPES.get(dtype, dtype))
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end}); "
            "re-download or re-export it"
        )
    return out


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


class SafetensorsCheckpoint(Mapping[str, torch.Tensor]):
    """The tensors of an HF folder (``model.safetensors`` or an index with shards), read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.meta: dict[str, TensorMeta] = {}
        self.index_path = self.folder / INDEX_NAME
        files = self._shard_files()
        headers = {name: read_header(path) for name, path in files.items()}
        if self._weight_map is None:
            for file_name, header in headers.items():
                for key, meta in header.items():
                    if key in self.meta:
                        raise CheckpointError(
                            f"{self.folder}: tensor {key} appears in {self.meta[key].file} and {file_name}"
                        )
                    self.meta[key] = meta
        else:
            for key, file_name in self._weight_map.items():
                if key not in headers[file_name]:
                    raise CheckpointError(f"{self.index_path}: {key} is listed in {file_name}, which does not hold it")
                self.meta[key] = headers[file_name][key]
        self._handles: dict[str, object] = {}

    def _shard_files(self) -> dict[str, Path]:
        self._weight_map: dict[str, str] | None = None
        if self.index_path.is_file():
            try:
                index = json.loads(self.index_path.read_text())
                weight_map = index["weight_map"]
                assert isinstance(weight_map, dict)
            except (ValueError, KeyError, AssertionError, TypeError):
                raise CheckpointError(
                    f"{self.index_path}: not a valid safetensors index (needs a 'weight_map' object)"
                ) from None
            files = {}
            for name in sorted(set(weight_map.values()), key=str):
                path = _check_shard_name(self.folder, name, self.index_path)
                if not path.is_file():
                    raise CheckpointError(f"{self.index_path}: shard {name} is missing from {self.folder}")
                files[name] = path
            self._weight_map = weight_map
            return files
        files = {p.name: p for p in sorted(self.folder.glob("*.safetensors"))}
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
    def _handle(self, file_name: str):
        handle = self._handles.get(file_name)
        if handle is None:
            from safetensors import safe_open

            path = self.folder / file_name
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:
                raise CheckpointError(f"{path}: cannot open ({exc})") from None
            self._handles[file_name] = handle
        return handle

    def get_tensor(self, key: str) -> torch.Tensor:
        """Read one tensor (the file handle is opened once and reused)."""
        meta = self.meta.get(key)
        if meta is None:
            raise MissingTensorError(f"{self.folder}: tensor {key} is not in the checkpoint")
        try:
            return self._handle(meta.file).get_tensor(key)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self.folder / meta.file}: cannot read {key} ({exc})") from None

    def get_slice(self, key: str, index: int) -> torch.Tensor:
        """Read ``tensor[index]`` without reading the rest (stacked expert tensors)."""
        meta = self.meta.get(key)
        if meta is None:
            raise MissingTensorError(f"{self.folder}: tensor {key} is not in the checkpoint")
        return self._handle(meta.file).get_slice(key)[index]

    @property
    def total_bytes(self) -> int:
        return sum(m.nbytes for m in self.meta.values())

    def close(self) -> None:
        self._handles.clear()
