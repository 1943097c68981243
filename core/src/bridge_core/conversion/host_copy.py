"""Device -> host copies for exported tensors, overlapped with the next tensor's gather and format.

A CUDA tensor is copied into pinned host memory without blocking, and yielded only once its copy has
completed; meanwhile the next tensor is already being gathered. Pinned blocks come from torch's
caching host allocator, so a repeated export (RL weight sync) reuses them instead of faulting in fresh
pageable pages for every tensor. Tensors already on the CPU pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def to_host(items: Iterable[tuple[str, torch.Tensor]], pin_memory: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, cpu_tensor)`` for every item, keeping at most one device-to-host copy in flight."""
    pending: tuple[str, torch.Tensor, torch.cuda.Event] | None = None
    for name, tensor in items:
        if tensor.device.type != "cuda" or not pin_memory:
            if pending is not None:
                yield _finish(pending)
                pending = None
            yield name, tensor.cpu()
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        if pending is not None:
            yield _finish(pending)
        pending = (name, host, event)
    if pending is not None:
        yield _finish(pending)


def _finish(pending: tuple[str, torch.Tensor, torch.cuda.Event]) -> tuple[str, torch.Tensor]:
    name, host, event = pending
    event.synchronize()
    return name, host
