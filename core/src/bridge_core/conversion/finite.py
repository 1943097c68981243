"""Value checks on converted tensors: casts that lose a tensor, and NaN/Inf weights.

One ``aminmax`` pass per tensor (about ten times faster than the cast itself, no temporary): a
tensor holds a NaN or an infinity exactly when its minimum or maximum is not finite (NaN
propagates), and it is all zeros exactly when both are zero.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError

log = logging.getLogger(__name__)
CHECKED = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
SHOWN = 8


def value_range(tensor: torch.Tensor) -> tuple[float, float] | None:
    """``(min, max)`` of a floating-point tensor (NaN if it holds one); None for other dtypes or no elements."""
    if tensor.dtype not in CHECKED or tensor.numel() == 0:
        return None
    lo, hi = torch.aminmax(tensor.detach())
    return float(lo), float(hi)


class NonfiniteScan:
    """Which named tensors hold NaN/Inf, asked without waiting on the device for each one: each tensor's
    range stays on its device, and ``names`` tests them all at once (one stack, one ``isfinite`` and
    one read per device, not one synchronisation per tensor, which would stall an export's copy
    pipeline: a read from the device waits for every transfer in flight). A CPU tensor's range is one
    ``aminmax``; CUDA tensors wait in groups (per device and dtype, at most ``GROUP`` tensors and
    ``GROUP_BYTES``) for one ``_foreach_norm(inf)`` each: the largest magnitude, which is NaN or
    infinite exactly when the tensor holds a NaN or an infinity. ``add`` may be called from several
    threads."""

    GROUP = 64
    GROUP_BYTES = 64 << 20

    def __init__(self) -> None:
        # (order of the add, names, range or largest magnitude on the device)
        self._values: list[tuple[int, tuple[str, ...], tuple[torch.Tensor, ...]]] = []
        self._waiting: dict[tuple[torch.device, torch.dtype], list[tuple[int, tuple[str, ...], torch.Tensor]]] = {}
        self._bytes: dict[tuple[torch.device, torch.dtype], int] = {}  # of each group waiting
        self._added = 0
        self._lock = threading.Lock()

    def add(self, tensor: torch.Tensor, *names: str) -> None:
        """Scan ``tensor``; ``names`` (the HF names it stands for) are reported if it holds NaN/Inf."""
        if tensor.dtype not in CHECKED or not tensor.numel():
            return
        tensor = tensor.detach()
        if tensor.device.type != "cuda":
            values = tuple(torch.aminmax(tensor))
            with self._lock:
                self._values.append((self._added, names, values))
                self._added += 1
            return
        key, nbytes = (tensor.device, tensor.dtype), tensor.numel() * tensor.element_size()
        with self._lock:
            group = self._waiting.setdefault(key, [])
            group.append((self._added, names, tensor))
            self._added += 1
            self._bytes[key] = self._bytes.get(key, 0) + nbytes
            if len(group) >= self.GROUP or self._bytes[key] >= self.GROUP_BYTES:
                self._flush(key)

    def _flush(self, key: tuple[torch.device, torch.dtype]) -> None:
        group = self._waiting[key]
        norms = torch._foreach_norm([t for *_, t in group], float("inf"))
        self._values += [(order, names, (norm,)) for (order, names, _), norm in zip(group, norms)]
        group.clear()
        self._bytes[key] = 0

    def names(self) -> list[str]:
        """Every name of every scanned tensor holding NaN/Inf, in the order they were added."""
        with self._lock:
            for key, group in self._waiting.items():
                if group:
                    self._flush(key)
            entries = sorted(self._values, key=lambda e: e[0])
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, _, values) in enumerate(entries):
            by_device.setdefault(values[0].device, []).append(i)
        hit = [False] * len(entries)
        for members in by_device.values():
            # mixed float dtypes are promoted by the stack: NaN and infinities stay what they are
            flat = [v.reshape(()) for i in members for v in entries[i][2]]
            bad = iter((~torch.isfinite(torch.stack(flat))).tolist())
            for i in members:
                hit[i] = any([next(bad) for _ in entries[i][2]])
        return [name for (_, names, _), h in zip(entries, hit) if h for name in names]


def _cast_error(name: str, source: torch.dtype, dtype: torch.dtype, src: tuple, out: tuple) -> str | None:
    """Why casting a tensor of range ``src`` (``(min, max)``, in ``source``) to ``dtype``, giving range
    ``out``, lost it: finite values became infinities (overflow), or a non-zero tensor all zeros."""
    (slo, shi), (lo, hi) = src, out
    finite, was_finite = math.isfinite(lo) and math.isfinite(hi), math.isfinite(slo) and math.isfinite(shi)
    if was_finite and not finite:
        limit = torch.finfo(dtype).max
        return (
            f"{name}: casting {source} to {dtype} overflows (values up to {max(-slo, shi):.4g}, "
            f"{dtype} holds at most {limit:.4g}); keep a wider dtype (--torch-dtype bfloat16 or float32)"
        )
    if (lo, hi) == (0.0, 0.0) and (slo, shi) != (0.0, 0.0):
        return (
            f"{name}: casting {source} to {dtype} turns the non-zero tensor into all zeros (underflow); "
            "keep a wider dtype (--torch-dtype bfloat16 or float32)"
        )
    return None


def checked_cast(tensor: torch.Tensor, dtype: torch.dtype, name: str, **to_kwargs) -> torch.Tensor:
    """``tensor.to(dtype)``, refusing a cast that turns finite values into infinities (overflow) or a
    non-zero tensor into all zeros (underflow): a ``ConfigError`` naming the tensor."""
    if tensor.dtype == dtype and not to_kwargs:
        return tensor
    out = tensor.to(dtype=dtype, **to_kwargs)
    if out.dtype == tensor.dtype or tensor.dtype not in CHECKED:
        return out
    span = value_range(out)
    if span is None:
        return out
    lo, hi = span
    if math.isfinite(lo) and math.isfinite(hi) and (lo, hi) != (0.0, 0.0):
        return out
    source = value_range(tensor)
    if source is None:
        return out
    why = _cast_error(name, tensor.dtype, dtype, source, span)
    if why is not None:
        raise ConfigError(why)
    return out


class DeferredCasts:
    """``checked_cast`` without waiting on the device: a CUDA tensor's ranges (before and after the
    cast) stay on the device, and ``check`` reads them all at once, raising the first cast that lost
    its tensor (the same ``ConfigError``). A CPU tensor is checked at once, as by ``checked_cast``.
    An export checks at its end: the tensor a failing cast made was yielded already."""

    def __init__(self) -> None:
        self._ranges: list[tuple[str, torch.dtype, torch.dtype, torch.Tensor]] = []

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
        if tensor.device.type != "cuda" or tensor.dtype == dtype:
            return checked_cast(tensor, dtype, name)
        out = tensor.to(dtype)
        if tensor.dtype in CHECKED and dtype in CHECKED and tensor.numel():
            self._ranges.append((name, tensor.dtype, dtype, torch.stack([*torch.aminmax(tensor), *torch.aminmax(out)])))
        return out

    def check(self) -> None:
        """Raise the ``ConfigError`` of the first cast (in cast order) that lost its tensor, if any."""
        if not self._ranges:
            return
        by_device: dict[torch.device, list[int]] = {}
        for i, (_, _, _, quad) in enumerate(self._ranges):
            by_device.setdefault(quad.device, []).append(i)
        read: dict[int, list[float]] = {}
        for members in by_device.values():
            values = torch.stack([self._ranges[i][3].double() for i in members]).tolist()
            read.update(zip(members, values))
        for i, (name, source, dtype, _) in enumerate(self._ranges):
            slo, shi, lo, hi = read[i]
            why = _cast_error(name, source, dtype, (slo, shi), (lo, hi))
            if why is not None:
                raise ConfigError(why)


def warn_nonfinite(names: Iterable[str], what: str, world: int = 1) -> list[str]:
    """Collect ``names`` of every rank (a collective when ``world`` > 1) and warn about them on rank 0
    (NaN/Inf weights are converted as they are, but a user should know). Returns the sorted names."""
    mine = sorted(set(names))
    if world > 1 and dist.is_initialized():
        every: list = [None] * world
        dist.all_gather_object(every, mine)
        mine = sorted({n for rank in every for n in rank})
    if mine and (not dist.is_initialized() or dist.get_rank() == 0):
        more = f" (+{len(mine) - SHOWN} more)" if len(mine) > SHOWN else ""
        log.warning(
            "%d %s tensor(s) hold NaN or Inf values, converted as they are: %s%s",
            len(mine),
            what,
            ", ".join(mine[:SHOWN]),
            more,
        )
    return mine


def nonfinite_logits(**logits: torch.Tensor) -> str | None:
    """Why a logit comparison cannot hold, when any of the named logits hold NaN or Inf; else None."""
    bad = []
    for who, values in logits.items():
        kinds = [k for k, hit in (("NaN", torch.isnan(values).any()), ("Inf", torch.isinf(values).any())) if hit]
        if kinds:
            bad.append(f"{who}'s hold {' and '.join(kinds)}")
    if not bad:
        return None
    return f"the logits are not finite ({'; '.join(bad)}): the weights hold NaN/Inf values or overflow in this dtype"
