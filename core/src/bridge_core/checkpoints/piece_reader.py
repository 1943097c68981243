"""Read any box of a stored ``torch_dist`` tensor into a given tensor, whatever layout wrote it.

megatron-core's loader asks for whole keys (every layer of a stacked key on some rank); a streaming
export wants a few parameters at a time. This reads through torch's own filesystem reader and
resharding (``create_read_items_for_chunk_list``): each request is (stored key, global offset,
destination), the destination's shape being the box's. The index is read once, safely, and reused.

torch's reader loads each stored record whole into new memory (``torch.load``) and copies the box out.
When the box is one contiguous byte range of a plain record (native byte order, no storage
transform) and its destination is contiguous, this reads the bytes straight into the destination
instead (``preadv``; the record's layout comes from ``torch.load`` onto the meta device, which reads
no data). Anything else is read as torch reads it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list
from torch.distributed.checkpoint.utils import _create_file_view
from torch.futures import Future

from bridge_core.checkpoints.checkpoint_load import _one_line, _SafeReader
from bridge_core.checkpoints.safetensors_io import memory_of
from bridge_core.errors import CheckpointError

Request = tuple[str, tuple[int, ...], torch.Tensor]  # (stored key, global offset, destination)


class _CachedReader(_SafeReader):
    """The safe reader, reading ``.metadata`` once."""

    _metadata: Any = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if self._metadata is None:
            self._metadata = super().read_metadata(*args, **kwargs)
        return self._metadata


class _DirectReader(_CachedReader):
    """Reads the boxes it can straight from the file into their destination; torch reads the rest."""

    def read_data(self, plan: LoadPlan, planner: Any) -> Future:
        """The tensors' records in file order, each file's whole span of them announced to the kernel
        first (``WILLNEED``: read ahead in the background, many requests in flight), then read."""
        rest: list[Any] = [item for item in plan.items if item.type != LoadItemType.TENSOR]
        where = {id(item): self.storage_data[item.storage_index] for item in plan.items}
        tensors = sorted(
            (item for item in plan.items if item.type == LoadItemType.TENSOR),
            key=lambda item: (where[id(item)].relative_path, where[id(item)].offset),
        )
        files: dict[str, io.FileIO] = {}
        try:
            self._announce(tensors, files)
            for item in tensors:
                if not self._read_direct(item, planner, files):
                    rest.append(item)
        finally:
            for f in files.values():
                f.close()
        if rest:
            return super().read_data(dataclasses.replace(plan, items=rest), planner)
        done: Future = Future()
        done.set_result(None)
        return done

    def _file(self, relative: str, files: dict[str, io.FileIO]) -> io.FileIO:
        if relative not in files:
            files[relative] = io.FileIO(Path(self.path) / relative, "r")
        return files[relative]

    def _announce(self, items: list[Any], files: dict[str, io.FileIO]) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        spans: dict[str, list[tuple[int, int]]] = {}
        for item in items:
            info = self.storage_data[item.storage_index]
            spans.setdefault(info.relative_path, []).append((info.offset, info.offset + info.length))
        for relative, ranges in spans.items():
            try:
                fd = self._file(relative, files).fileno()
                for start, end in _merged(ranges):
                    os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
            except OSError:  # a missing or unreadable file: the read says so
                continue

    def _read_direct(self, item: Any, planner: Any, files: dict[str, io.FileIO]) -> bool:
        info = self.storage_data[item.storage_index]
        target = planner.resolve_tensor(item).detach()
        if not hasattr(os, "preadv") or info.transform_descriptors:
            return False
        if target.device.type != "cpu" or not target.is_contiguous():
            return False
        path = Path(self.path) / info.relative_path
        try:
            f = self._file(info.relative_path, files)
        except OSError:
            return False  # torch's reader reports it
        layout = _record_layout(f, info.offset, info.length)
        if layout is None or layout[0] != target.dtype:
            return False
        dtype, shape, data = layout
        span = _contiguous_span(shape, item.storage_offsets, item.lengths)
        if span is None or span[1] != target.numel():
            return False
        _pread_exact(f, target, info.offset + data + span[0] * target.element_size(), path)
        planner.commit_tensor(item, target)
        return True


def _merged(ranges: list[tuple[int, int]], gap: int = 1 << 20) -> list[tuple[int, int]]:
    """Byte ranges sorted, those less than ``gap`` apart joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start - out[-1][1] < gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _record_layout(f: io.FileIO, offset: int, length: int) -> tuple[torch.dtype, tuple[int, ...], int] | None:
    """(dtype, shape, offset of its data in the record) of a ``torch.save``d contiguous tensor that owns its
    storage, in this machine's byte order; None for anything else (read the torch way)."""
    try:
        view = _create_file_view(f, offset, length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = torch.load(view, map_location="meta", weights_only=True)
        view.seek(0)
        records = torch._C.PyTorchFileReader(view)
        order = records.get_record("byteorder") if records.has_record("byteorder") else sys.byteorder.encode()
    except Exception:  # torch's own reader says what is wrong with it
        return None
    if not isinstance(meta, torch.Tensor) or bytes(order).decode(errors="replace") != sys.byteorder:
        return None
    storage = meta.untyped_storage()
    data = getattr(storage, "_checkpoint_offset", None)
    if (
        not isinstance(data, int)
        or meta.storage_offset() != 0
        or not meta.is_contiguous()
        or storage.nbytes() != meta.numel() * meta.element_size()
        or data + storage.nbytes() > length
    ):
        return None
    return meta.dtype, tuple(meta.shape), data


def _contiguous_span(shape: tuple[int, ...], offsets: Any, lengths: Any) -> tuple[int, int] | None:
    """(first element, elements) of box ``offsets`` + ``lengths`` of a C-contiguous tensor of ``shape``,
    when the box is one contiguous run of it; None otherwise."""
    if len(offsets) != len(shape) or len(lengths) != len(shape):
        return None
    dims = len(shape)
    cut = next((d for d in range(dims) if lengths[d] != 1), dims)  # leading dims of one element
    if any(offsets[d] != 0 or lengths[d] != shape[d] for d in range(cut + 1, dims)):
        return None
    strides = [math.prod(shape[d + 1 :]) for d in range(dims)]
    return sum(o * s for o, s in zip(offsets, strides)), math.prod(lengths)


def _pread_exact(f: io.FileIO, target: torch.Tensor, offset: int, path: Path) -> None:
    nbytes = target.numel() * target.element_size()
    if nbytes == 0:
        return
    view = memory_of(target)
    got = 0
    try:
        while got < nbytes:
            n = os.preadv(f.fileno(), [view[got:]], offset + got)
            if not n:
                raise CheckpointError(f"{path}: truncated (it ends at byte {offset + got} inside a record)")
            got += n
    finally:
        view.release()


class _BoxPlanner(DefaultLoadPlanner):
    """Reads exactly the requested boxes (nothing else of the stored keys)."""

    def __init__(self, requests: list[Request]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.requests = requests
        self.dest = {(key, tuple(offset)): tensor for key, offset, tensor in requests}

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, offset, tensor in self.requests:
            stored = self.metadata.state_dict_metadata.get(key)
            if not isinstance(stored, TensorStorageMetadata):
                raise CheckpointError(f"{key}: not a tensor stored in the checkpoint")
            box = [o + s for o, s in zip(offset, tensor.shape)]
            if len(offset) != len(stored.size) or any(e > s for e, s in zip(box, stored.size)):
                raise CheckpointError(
                    f"{key}: the checkpoint stores {tuple(stored.size)}, "
                    f"no box {tuple(tensor.shape)} at {tuple(offset)}"
                )
            if stored.properties.dtype != tensor.dtype:
                raise CheckpointError(f"{key}: stored as {stored.properties.dtype}, asked for as {tensor.dtype}")
            chunk = ChunkStorageMetadata(offsets=torch.Size(offset), sizes=tensor.shape)
            items += create_read_items_for_chunk_list(key, stored, [chunk])
        return LoadPlan(items)

    def resolve_tensor(self, read_item: Any) -> torch.Tensor:
        tensor = self.dest[(read_item.dest_index.fqn, tuple(read_item.dest_index.offset))]
        return self.transform_tensor(read_item, tensor)  # the read item's box of it


class PieceReader:
    """``read(requests)`` fills each destination from one checkpoint's ``iter_*/`` folder."""

    def __init__(self, weights_dir: str | Path):
        self.weights_dir = Path(weights_dir)
        self.reader = _DirectReader(self.weights_dir)

    def read(self, requests: Iterable[Request]) -> None:
        requests = list(requests)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                dcp.load({}, storage_reader=self.reader, planner=_BoxPlanner(requests), no_dist=True)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as exc:  # torch's CheckpointException is a BaseException
            first = requests[0][0] if requests else "nothing"
            more = f" (+{len(requests) - 1} more)" if len(requests) > 1 else ""
            raise CheckpointError(f"{self.weights_dir}: cannot read {first}{more}: {_one_line(exc)}") from exc
