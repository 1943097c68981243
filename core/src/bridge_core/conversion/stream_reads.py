"""The streaming import's reads: each stored tensor's values, made when torch's writer asks for them.

A stored tensor ("piece") is a Megatron parameter or a run of its rows (the gate and up halves of
``linear_fc1``). When the parameter's mapping only places whole HF rows (identity, vocabulary
padding, QKV, gate/up; ``direct.py`` decides it as for a live load) the piece's rows are read from
the safetensors files straight into the buffer the writer serialises, in ``CHUNK_BYTES`` reads, each
scanned for NaN/Inf right after it is read: no joined tensor, no slice copy. Anything else takes the
general path: the full parameter is read and mapped (``read_full``), cast, and each piece copied
out of it.

Reads run ahead of the writers: ``order`` tells the resolver the sequence in which each of torch's
writer threads will ask for its pieces; when a writer takes one, the next one of its sequence is read
on a reader thread while this one is written, as long as at most ``AHEAD_BYTES`` are read ahead (a
larger piece alone). Buffers come from a ``BufferPool``: a written piece's memory serves a later one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from bridge_core.conversion.direct import _hook_overridden, _layout_trusted, _pieces_valid
from bridge_core.conversion.finite import NonfiniteScan, checked_cast
from bridge_core.conversion.load import read_full
from bridge_core.conversion.row_reader import Read, chunked, zero_uncovered
from bridge_core.conversion.stream_buffers import BufferPool
from bridge_core.conversion.tasks import Task
from bridge_core.progress import Progress

CHUNK_BYTES = 16 << 20  # one read from the file, then its NaN/Inf scan
AHEAD_BYTES = 512 << 20  # read ahead of the writers at most (one larger piece alone)
READERS = 2  # reader threads (one per writer thread keeps each writer's next piece coming)
Key = tuple[str, tuple[int, ...]]  # (stored key, global offset)


@dataclass(frozen=True)
class Piece:
    """Where one stored tensor's data lie in its parameter (a view: size, stride, storage offset)."""

    task: Task
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(torch.Size(self.size).numel()) * self.task.param.tensor.element_size()

    def rows(self) -> tuple[int, int] | None:
        """``(first, count)``: the piece is that run of whole rows (dim 0) of the contiguous parameter."""
        full = tuple(self.task.param.full_shape)
        if not full or len(self.size) != len(full) or self.size[1:] != full[1:]:
            return None
        row = int(torch.Size(full[1:]).numel())
        stride = tuple(int(torch.Size(full[i + 1 :]).numel()) for i in range(len(full)))
        if any(n > 1 and s != t for n, s, t in zip(self.size, self.stride, stride)) or self.offset % max(row, 1):
            return None
        return self.offset // max(row, 1), self.size[0]


def row_layout(task: Task, bridge: Any, source: Any, config: Any) -> list | None:
    """``(hf name, first hf row, first row, rows)`` pieces that make up the full parameter, when its
    mapping only places whole rows of HF tensors of its dtype (as ``direct.plan_reads`` requires)."""
    m, full = task.mapping, tuple(task.param.full_shape)
    if m.index is not None or not full or not hasattr(source, "read_rows_into"):
        return None
    if _hook_overridden(bridge) or not _layout_trusted(type(m)):
        return None
    hf_rows = {}
    for name in m.hf_names:
        meta = source.meta.get(name)
        if meta is None or meta.dtype != task.param.dtype or not meta.shape or tuple(meta.shape[1:]) != full[1:]:
            return None
        hf_rows[name] = meta.shape[0]
    layout = m.hf_row_layout(hf_rows, task.context(config, bridge.hf_config))
    if layout is None or not _pieces_valid(layout, hf_rows, full[0]):
        return None
    return layout


def clip(layout: list, first: int, count: int) -> list[Read]:
    """The reads of rows ``[first, first + count)`` of the full parameter, rows counted from ``first``."""
    reads = []
    for name, hf_row, row, rows in layout:
        lo, hi = max(first, row), min(first + count, row + rows)
        if lo < hi:
            reads.append((name, hf_row + lo - row, lo - first, hi - lo))
    return reads


class PieceResolver:
    """``resolver(key, shape)``: the stored tensor ``key``'s values (a tensor owning its storage), on
    any writer thread; ``release(tensor)`` once written. ``expect(keys)`` names the pieces this
    process writes, before the first ask."""

    def __init__(self, pieces: dict[Key, Piece], bridge: Any, source: Any, config: Any, progress: Progress | None):
        self.pieces, self.bridge, self.source, self.config, self.progress = pieces, bridge, source, config, progress
        self.pool = BufferPool(count=2 * READERS)  # what a writer gave back, until its next read takes it
        self.scan = NonfiniteScan()
        self.reads: dict[Key, list[Read] | None] = {}
        self.left: Counter[str] = Counter()  # general-path pieces of each parameter not made yet
        self.full: dict[str, torch.Tensor] = {}  # general path: a parameter kept for its other pieces
        self.counted: set[str] = set()
        self.lock = threading.Lock()
        self.read_lock = threading.Lock()  # the general path's reader and bridge hooks: one at a time
        self.following: dict[Key, Key] = {}
        self.ahead: dict[Key, Future] = {}
        self.asked: set[Key] = set()
        self.ahead_bytes = 0
        self.readers = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="import-read")
        self.direct = 0  # pieces read straight into their buffer (for tests and profiles)

    def expect(self, keys: Iterable[Key]) -> None:
        layouts: dict[str, list | None] = {}
        for key in keys:
            piece = self.pieces[key]
            name = piece.task.param.global_name
            if name not in layouts:
                layouts[name] = row_layout(piece.task, self.bridge, self.source, self.config)
            span = piece.rows()
            layout = layouts[name]
            self.reads[key] = None if layout is None or span is None else clip(layout, *span)
            if self.reads[key] is None:
                self.left[name] += 1

    def order(self, sequences: Iterable[Iterable[Key]]) -> None:
        """Each writer thread's pieces, in the order it will ask for them (a guess: a piece asked for
        out of turn is read then)."""
        for sequence in sequences:
            keys = [k for k in sequence if k in self.reads]
            self.following.update(zip(keys, keys[1:]))

    def __call__(self, key: Key, shape: torch.Size) -> torch.Tensor:
        with self.lock:
            future = self.ahead.pop(key, None)
            self.asked.add(key)
        if future is None:
            tensor = self._make(key)
        else:
            try:
                tensor = future.result()
            finally:
                with self.lock:
                    self.ahead_bytes -= self.pieces[key].nbytes
        self._read_ahead(self.following.get(key))
        return tensor.view(shape)

    def release(self, tensor: torch.Tensor) -> None:
        self.pool.give(tensor)

    def close(self) -> None:
        self.readers.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            left, self.ahead = list(self.ahead.values()), {}
        for future in left:  # read for a writer that never asked (it failed): their memory goes
            if not future.cancelled() and future.exception() is None:
                self.pool.give(future.result())
        self.pool.clear()
        self.full.clear()

    # -- making a piece ----------------------------------------------------------------------------
    def _read_ahead(self, key: Key | None) -> None:
        if key is None:
            return
        nbytes = self.pieces[key].nbytes
        with self.lock:
            if key in self.ahead or key in self.asked:
                return
            if self.ahead_bytes and self.ahead_bytes + nbytes > AHEAD_BYTES:
                return
            self.ahead_bytes += nbytes
            try:
                self.ahead[key] = self.readers.submit(self._make, key)
            except RuntimeError:  # shut down
                self.ahead_bytes -= nbytes

    def _counted(self, piece: Piece) -> None:
        """Progress counts each parameter once, when its first piece is made."""
        name = piece.task.param.global_name
        with self.lock:
            if name in self.counted or self.progress is None:
                return
            self.counted.add(name)
            param = piece.task.param.tensor
            self.progress.update(param.numel() * param.element_size())

    def _make(self, key: Key) -> torch.Tensor:
        piece, reads = self.pieces[key], self.reads.get(key)
        if reads is None:
            return self._general(key, piece)
        out = self.pool.take(piece.size, piece.task.param.dtype)
        row_bytes = out[0].numel() * out.element_size() if out.dim() else out.element_size()
        for name, hf_row, local, rows in chunked(reads, row_bytes, CHUNK_BYTES):
            part = out[local : local + rows]
            self.source.read_rows_into(name, hf_row, part)
            self.scan.add(part, name)
        zero_uncovered(out, reads)
        with self.lock:
            self.direct += 1
        self._counted(piece)
        return out

    def _general(self, key: Key, piece: Piece) -> torch.Tensor:
        """Read and map the whole parameter (kept until its last piece is made), copy the piece out."""
        name = piece.task.param.global_name
        with self.read_lock:
            full = self.full.get(name)
            if full is None:
                full = read_full(piece.task, self.bridge, self.source, self.config)
                self.scan.add(full, *piece.task.hf_keys)
                full = checked_cast(full, piece.task.param.dtype, " + ".join(piece.task.hf_keys)).contiguous()
                self._counted(piece)
            self.left[name] -= 1
            if self.left[name] > 0:
                self.full[name] = full
            else:
                self.full.pop(name, None)
        storage = full.untyped_storage()
        whole = piece.offset == 0 and piece.size == tuple(full.shape) and storage.nbytes() == full.nbytes
        if whole and storage.resizable():  # its own memory, no copy: given to the pool once written
            return full
        out = self.pool.take(piece.size, piece.task.param.dtype)
        out.copy_(full.as_strided(piece.size, piece.stride, piece.offset))
        return out
