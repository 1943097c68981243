"""Device -> host copies for exported tensors, overlapped with the next tensors' gather and format.

Small CUDA tensors (at most ``SMALL_BYTES`` each: MoE experts, norms, biases) travel in batches: a run
of them (``partition``) is gathered on the device into one staging buffer (one ``torch.cat``, each
tensor at an ``ALIGN``-ed offset), copied by one non-blocking transfer into a block of the pinned pool
(``PinnedPool``), and yielded as views of that block. A larger tensor is copied alone into pinned
memory of its own (torch's caching host allocator). Every transfer runs on a copy stream of its own,
after the work queued before it on the current stream: the gathers, casts and checks of the next
tensors do not wait behind the transfers. (A read from the device does: on an H200 a one-scalar read
waited for a 1 GiB copy on another stream to finish, so an export reads nothing from the device
until its end.) Several transfers stay in flight (up to ``IN_FLIGHT_BYTES``, and always one): a
tensor is yielded, in order, once its transfer has completed, while the next ones are gathered and
copied. A parameter must not be changed in place while its export runs (a transfer may
still be reading it). Tensors already on the CPU pass through unchanged.

Lifetime: a yielded tensor is never overwritten; it stays valid as long as it is kept. A block of the
pool is handed out again only once nothing views it any more (its storage's use count is back to the
pool's own), so keeping one small tensor keeps its whole block (up to ``BATCH_BYTES``) from reuse:
clone small tensors you keep long. When every block is in use, a batch takes a block of torch's
caching host allocator instead. The pool is one per process (the in-flight window and four blocks:
384 MiB by default, ``BRIDGE_PINNED_POOL_MB``; 0: no pool), allocated whole before the first batch
of the first export that needs it (``reserve_pinned`` does it earlier) and kept for later exports.
Device memory: the staging buffers of the batches in flight (at most the in-flight window).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from bridge_core.errors import ConfigError

IN_FLIGHT_BYTES = 256 << 20
BATCH_BYTES = 32 << 20  # one transfer of small tensors (and one block of the pool)
SMALL_BYTES = 4 << 20  # a tensor up to this size travels in a batch
ALIGN = 64  # bytes; every tensor of a batch starts at a multiple of it
POOL_ENV = "BRIDGE_PINNED_POOL_MB"
POOL_BYTES = IN_FLIGHT_BYTES + 4 * BATCH_BYTES  # the window in flight (part-filled batches), the consumer's block

# The number of references to a storage; a block is free when it is back to the pool's own. Without it
# (another torch), no block is reused: every batch takes a block of torch's caching host allocator.
_USE_COUNT: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def partition(
    sizes: Iterable[int | None], batch_bytes: int = BATCH_BYTES, small_bytes: int = SMALL_BYTES
) -> Iterator[list[int]]:
    """Consecutive groups of indices into ``sizes`` (bytes; None: a tensor that is not batched), in order.

    A run of small sizes (at most ``small_bytes`` each) fills groups whose ``layout`` takes at most
    ``batch_bytes``; any other size is a group of its own, and ends the group before it. Each group is
    yielded as soon as it is complete (``sizes`` may be a generator: it is read one ahead at most).
    """
    small = min(small_bytes, batch_bytes)
    group: list[int] = []
    end = 0
    for i, size in enumerate(sizes):
        if size is None or size > small:
            if group:
                yield group
                group, end = [], 0
            yield [i]
            continue
        start = _aligned(end) if group else 0
        if group and start + size > batch_bytes:
            yield group
            group, start = [], 0
        group.append(i)
        end = start + size
    if group:
        yield group


def layout(sizes: list[int]) -> tuple[list[int], int]:
    """The offset of each of ``sizes`` (bytes) laid out back to back at ``ALIGN``-ed offsets, and the end."""
    offsets: list[int] = []
    end = 0
    for size in sizes:
        start = _aligned(end) if offsets else 0
        offsets.append(start)
        end = start + size
    return offsets, end


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def pool_bytes_setting() -> int:
    """The pool's cap: ``BRIDGE_PINNED_POOL_MB`` (MiB) when set, else ``POOL_BYTES``."""
    value = os.environ.get(POOL_ENV, "").strip()
    if not value:
        return POOL_BYTES
    if not value.isdigit():
        raise ConfigError(f"{POOL_ENV}={value!r}: expected a whole number of MiB (0: no pinned pool)")
    return int(value) << 20


class PinnedPool:
    """Reusable host blocks of ``block_bytes`` (pinned when ``pin``; default: when CUDA is available),
    at most ``max_bytes`` of them together, allocated as needed and kept.

    ``take(n)`` returns a free block (nothing views it), else a new one while under the cap, else a
    one-off block of torch's allocator (freed with its last view). ``allocated`` counts every block
    allocated, pool or one-off.
    """

    def __init__(self, block_bytes: int = BATCH_BYTES, max_bytes: int | None = None, pin: bool | None = None):
        self.block_bytes = block_bytes
        self.max_blocks = (pool_bytes_setting() if max_bytes is None else max_bytes) // block_bytes
        self.pin = torch.cuda.is_available() if pin is None else pin
        self.blocks: list[tuple[torch.Tensor, int]] = []  # (block, its use count when free)
        self.allocated = 0
        self._next = 0
        self._lock = threading.Lock()

    def _new(self, nbytes: int) -> torch.Tensor:
        self.allocated += 1  # a whole number of ALIGN bytes: the block can be seen as any dtype
        return torch.empty(_aligned(nbytes), dtype=torch.uint8, pin_memory=self.pin)

    def _grow(self) -> torch.Tensor:
        assert _USE_COUNT is not None
        block = self._new(self.block_bytes)
        self.blocks.append((block, _USE_COUNT(block.untyped_storage()._cdata)))
        return block

    def take(self, nbytes: int) -> torch.Tensor:
        """A host block of at least ``nbytes`` bytes that nothing else views (a view of it: while that
        or any view made from it lives, the block is not handed out again; safe across threads)."""
        if nbytes > self.block_bytes or _USE_COUNT is None:
            return self._new(max(nbytes, self.block_bytes))
        with self._lock:
            count = len(self.blocks)
            for k in range(count):
                i = (self._next + k) % count
                block, free = self.blocks[i]
                if _USE_COUNT(block.untyped_storage()._cdata) == free:
                    self._next = i + 1
                    return block[:]
            if count < self.max_blocks:
                self._next = count + 1
                return self._grow()[:]
        return self._new(self.block_bytes)

    def reserve(self, nbytes: int) -> None:
        """Allocate blocks now, up to ``nbytes`` (and the cap), so that no export pays for them."""
        with self._lock:
            while _USE_COUNT is not None and len(self.blocks) < min(self.max_blocks, -(-nbytes // self.block_bytes)):
                self._grow()


_POOL: PinnedPool | None = None


def shared_pool() -> PinnedPool:
    """The process's pool (made on first use, capped by ``BRIDGE_PINNED_POOL_MB``)."""
    global _POOL
    if _POOL is None:
        _POOL = PinnedPool()
    return _POOL


def reserve_pinned(nbytes: int = POOL_BYTES) -> PinnedPool:
    """Allocate the process's pinned pool now (before a first export), up to ``nbytes`` and its cap."""
    pool = shared_pool()
    pool.reserve(nbytes)
    return pool


_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _copy_stream(device: torch.device) -> torch.cuda.Stream:
    if device not in _STREAMS:
        _STREAMS[device] = torch.cuda.Stream(device=device)
    return _STREAMS[device]


@dataclass
class _Transfer:
    """Host tensors whose copy was started; ``keep``: device tensors it reads, kept alive until it is done."""

    items: list[tuple[str, torch.Tensor]]
    nbytes: int
    done: torch.cuda.Event | None  # None: copied already (a CPU tensor)
    keep: tuple[torch.Tensor, ...] = ()

    def wait(self) -> list[tuple[str, torch.Tensor]]:
        """The host tensors, once the copy is done (handed over: this transfer keeps no view of them)."""
        if self.done is not None:
            self.done.synchronize()
        items, self.items, self.keep = self.items, [], ()
        return items


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def copy_batch(members: list[tuple[str, torch.Tensor]], pool: PinnedPool) -> _Transfer:
    """Start one transfer of ``members`` (on one device, each at most a block) into a block of ``pool``.

    On the device they are gathered into one staging buffer (at ``layout`` offsets; the gaps are left
    unset), which is copied into the block, on a copy stream after the current stream's work for a CUDA
    device (synchronously for CPU tensors); the host tensors are views of the block.
    """
    sizes = [_nbytes(t) for _, t in members]
    offsets, total = layout(sizes)
    device = members[0][1].device
    pad = torch.empty(ALIGN, dtype=torch.uint8, device=device)
    pieces, end = [], 0
    for (_, tensor), offset, size in zip(members, offsets, sizes):
        if offset > end:
            pieces.append(pad[: offset - end])
        pieces.append(tensor.reshape(-1).view(torch.uint8))
        end = offset + size
    staging = torch.cat(pieces)  # a copy even of one piece: the copy stream reads nothing the caller owns
    host = pool.take(total)
    typed: dict[torch.dtype, torch.Tensor] = {}  # the block seen as each dtype (as_strided: the cheapest view)
    items = []
    for (name, tensor), offset in zip(members, offsets):
        dtype = tensor.dtype
        if dtype not in typed:
            typed[dtype] = host.view(dtype)
        stride = tensor.stride() if tensor.is_contiguous() else _contiguous_strides(tensor.shape)
        items.append((name, typed[dtype].as_strided(tensor.shape, stride, offset // tensor.element_size())))
    if device.type != "cuda":
        host[:total].copy_(staging)
        return _Transfer(items, total, None)
    stream = _copy_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        host[:total].copy_(staging, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    return _Transfer(items, total, done, (staging,))


def copy_alone(name: str, tensor: torch.Tensor) -> _Transfer:
    """Start the transfer of one tensor into pinned memory of its own (on the copy stream, after the
    current stream's work, for a CUDA tensor; the tensor is kept alive until its copy is done)."""
    cuda = tensor.device.type == "cuda"
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=cuda)
    if not cuda:
        host.copy_(tensor)
        return _Transfer([(name, host)], _nbytes(host), None)
    stream = _copy_stream(tensor.device)
    stream.wait_stream(torch.cuda.current_stream(tensor.device))
    with torch.cuda.stream(stream):
        host.copy_(tensor, non_blocking=True)
        done = torch.cuda.Event()
        done.record(stream)
    return _Transfer([(name, host)], _nbytes(host), done, (tensor,))


def _by_device(members: list[tuple[str, torch.Tensor]]) -> list[list[tuple[str, torch.Tensor]]]:
    """``members`` in runs of one device each (one run, unless a process exports from several GPUs)."""
    runs = [[members[0]]]
    for member in members[1:]:
        if member[1].device == runs[-1][-1][1].device:
            runs[-1].append(member)
        else:
            runs.append([member])
    return runs


def _on_cuda(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cuda"


def to_host(
    items: Iterable[tuple[str, torch.Tensor]],
    pin_memory: bool = True,
    in_flight_bytes: int | None = None,
    *,
    batch_bytes: int = BATCH_BYTES,
    small_bytes: int = SMALL_BYTES,
    pool: PinnedPool | None = None,
    transfer: Callable[[torch.Tensor], bool] = _on_cuda,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu_tensor)`` for every item, in order, with up to ``in_flight_bytes`` of
    device-to-host transfers queued ahead of the one yielded.

    ``pin_memory=False``: every tensor is copied on its own with ``.cpu()`` (synchronously).
    ``pool``: where batches go (default: the process's ``shared_pool``). ``transfer``: which tensors
    are copied (default: CUDA ones; the others pass through ``.cpu()``); a test passes one that takes
    CPU tensors too, to run the batched path on the CPU.
    """
    budget = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes
    arrived: deque[tuple[str, torch.Tensor, bool]] = deque()

    def sizes() -> Iterator[int | None]:
        for name, tensor in items:
            moved = pin_memory and transfer(tensor)
            arrived.append((name, tensor, moved))
            yield _nbytes(tensor) if moved else None

    pending: deque[_Transfer] = deque()
    queued = 0
    small = min(small_bytes, batch_bytes)
    try:
        for group in partition(sizes(), batch_bytes, small):
            members = [arrived.popleft() for _ in group]
            name, tensor, moved = members[0]
            if not moved:
                while pending:
                    yield from pending.popleft().wait()
                queued = 0
                yield name, tensor.cpu()
                continue
            if len(members) == 1 and _nbytes(tensor) > small:
                started = [copy_alone(name, tensor)]
            else:
                into = pool if pool is not None else shared_pool()
                into.reserve(into.max_blocks * into.block_bytes)  # the whole pool before its first batch
                started = [copy_batch(run, into) for run in _by_device([(n, t) for n, t, _ in members])]
            pending.extend(started)
            queued += sum(s.nbytes for s in started)
            while len(pending) > 1 and queued > budget:
                done = pending.popleft()
                queued -= done.nbytes
                yield from done.wait()
        while pending:
            yield from pending.popleft().wait()
    finally:  # closed early, or an error: no copy may still write into a block or read a staging buffer
        for left in pending:
            left.wait()
