"""Device -> host copies for exported tensors, overlapped with the next tensors' gather and format.

A CUDA tensor is copied into pinned host memory without blocking, and yielded only once its copy has
completed; meanwhile the next tensors are already being gathered and copied. Several copies stay in
flight (up to ``IN_FLIGHT_BYTES``, and always one), so a run of small tensors (MoE experts, norms)
keeps the bus busy instead of waiting on each copy in turn. Pinned blocks come from torch's caching
host allocator, so a repeated export (RL weight sync) reuses them instead of faulting in fresh
pageable pages for every tensor. Tensors already on the CPU pass through unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import torch

IN_FLIGHT_BYTES = 256 << 20


def to_host(
    items: Iterable[tuple[str, torch.Tensor]], pin_memory: bool = True, in_flight_bytes: int | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu_tensor)`` for every item, in order, with up to ``in_flight_bytes`` of
    device-to-host copies queued ahead of the one yielded."""
    budget = IN_FLIGHT_BYTES if in_flight_bytes is None else in_flight_bytes
    pending: deque[tuple[str, torch.Tensor, torch.cuda.Event]] = deque()
    queued = 0
    for name, tensor in items:
        if tensor.device.type != "cuda" or not pin_memory:
            while pending:
                yield _finish(pending.popleft())
            yield name, tensor.cpu()
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        pending.append((name, host, event))
        queued += host.numel() * host.element_size()
        while len(pending) > 1 and queued > budget:
            done = _finish(pending.popleft())
            queued -= done[1].numel() * done[1].element_size()
            yield done
    while pending:
        yield _finish(pending.popleft())


def _finish(pending: tuple[str, torch.Tensor, torch.cuda.Event]) -> tuple[str, torch.Tensor]:
    name, host, event = pending
    event.synchronize()
    return name, host
