"""Host memory and file writes for the streaming conversion: reused buffers, and writeback as we go.

**Reused buffers.** A streaming conversion allocates its whole model's bytes over its run, one tensor
at a time, and ``release_large_frees`` gives each back to the system once written. Fresh memory is
what costs there: on the 2-core VM of docs/benchmarks.md, filling a new 28 MB buffer took 0.78 s of
CPU per GB against 0.12 s for the same copy into a buffer in use (page faults, zeroing, unmapping).
``BufferPool`` keeps storages given back, up to a byte cap, and hands one out again for a tensor of
the same size: transformer layers repeat their shapes, and the writers take tensors largest first,
so sizes come in runs. Each tensor owns its whole storage (torch's checkpoint writer copies a view of a
larger one).

**Writeback as we go.** ``Writeback`` asks the kernel to begin writing a file's range that was just
written (Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so that dirty pages
do not pile up to the kernel's limit while the disk is idle, and the final ``fsync`` waits for
little. Reading 2.4 GB while writing 2.4 GB on that VM: 6.5-8.0 s with it, 8.3-11.9 s without (the
final fsync 0.1-2.4 s against 3.3-3.5 s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import threading
from collections import OrderedDict
from typing import Any

import torch

POOL_BYTES = 512 << 20  # storages kept for reuse, at most
WRITEBACK_BYTES = 64 << 20  # written bytes after which their writeback is started
SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


class BufferPool:
    """``take(shape, dtype)``: a contiguous tensor owning all of its storage, reused when one of that
    size was given back; ``give(tensor)``: its storage is free again (nothing uses it or a view of it
    any more). At most ``cap`` bytes and ``count`` storages are kept; beyond that the oldest are freed
    (their storage is emptied, so that a reference left elsewhere, such as torch's writer's, holds no
    memory)."""

    def __init__(self, cap: int = POOL_BYTES, count: int | None = None):
        self.cap, self.count = cap, count
        self._stored = 0
        self._free: OrderedDict[int, list[torch.UntypedStorage]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.reused = self.made = 0  # for tests and profiles

    def take(self, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        storage = None
        with self._lock:
            stack = self._free.get(nbytes)
            if stack:
                storage = stack.pop()
                self._bytes -= nbytes
                self._stored -= 1
                if not stack:
                    del self._free[nbytes]
                self.reused += 1
            else:
                self.made += 1
        if storage is None:
            storage = torch.UntypedStorage(nbytes)
        return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))

    def give(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0 or not storage.resizable():
            return
        if nbytes > self.cap:
            storage.resize_(0)
            return
        dropped = []
        with self._lock:
            self._free.setdefault(nbytes, []).append(storage)
            self._free.move_to_end(nbytes)
            self._bytes += nbytes
            self._stored += 1
            while self._bytes > self.cap or (self.count is not None and self._stored > self.count):
                size, stack = next(iter(self._free.items()))
                dropped.append(stack.pop(0))
                self._bytes -= size
                self._stored -= 1
                if not stack:
                    del self._free[size]
        for old in dropped:
            old.resize_(0)

    def clear(self) -> None:
        with self._lock:
            stacks, self._free, self._bytes, self._stored = list(self._free.values()), OrderedDict(), 0, 0
        for stack in stacks:
            for storage in stack:
                storage.resize_(0)


class Writeback:
    """Starts the writeback of a file's bytes every ``every`` bytes written (Linux; elsewhere nothing)."""

    def __init__(self, fd: int, every: int = WRITEBACK_BYTES):
        self.fd, self.every = fd, every
        self.started = 0  # bytes [0, started) have been handed to the kernel
        self.call = _sync_file_range()

    def written(self, end: int) -> None:
        """Bytes up to offset ``end`` are written (appended in order)."""
        if self.call is not None and end - self.started >= self.every:
            self.range(self.started, end - self.started)
            self.started = end

    def range(self, offset: int, nbytes: int) -> None:
        """Start writing back ``nbytes`` at ``offset`` (any order)."""
        if self.call is None or nbytes <= 0:
            return
        if self.call(self.fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) != 0:  # refused here: fsync does it all
            self.call = None


@functools.cache
def _sync_file_range() -> Any:
    """libc's ``sync_file_range`` (Linux), or None."""
    name = ctypes.util.find_library("c")
    try:
        call = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError, TypeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call
