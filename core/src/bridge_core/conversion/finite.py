"""Value checks on converted tensors: casts that lose a tensor, and NaN/Inf weights.

One ``aminmax`` pass per tensor (about ten times faster than the cast itself, no temporary): a
tensor holds a NaN or an infinity exactly when its minimum or maximum is not finite (NaN
propagates), and it is all zeros exactly when both are zero.
"""

from __future__ import annotations

import logging
import math
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
    """Which named tensors hold NaN/Inf, asked without waiting on the device for each one: a flag per
    tensor stays on its device, and ``names`` reads them all at once (one synchronisation, not one per
    tensor, which would stall an export's copy pipeline)."""

    def __init__(self) -> None:
        self._flags: list[tuple[tuple[str, ...], torch.Tensor]] = []

    def add(self, tensor: torch.Tensor, *names: str) -> None:
        """Scan ``tensor``; ``names`` (the HF names it stands for) are reported if it holds NaN/Inf."""
        if tensor.dtype in CHECKED and tensor.numel():
            lo, hi = torch.aminmax(tensor.detach())
            self._flags.append((names, ~(torch.isfinite(lo) & torch.isfinite(hi))))

    def names(self) -> list[str]:
        if not self._flags:
            return []
        hits = torch.stack([flag.cpu() for _, flag in self._flags]).tolist()
        return [name for (names, _), hit in zip(self._flags, hits) if hit for name in names]


def checked_cast(tensor: torch.Tensor, dtype: torch.dtype, name: str, **to_kwargs) -> torch.Tensor:
    """``tensor.to(dtype)``, refusing a cast that turns finite values into infinities (overflow) or a
    non-zero tensor into all zeros (underflow): a ``ConfigError`` naming the tensor."""
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
    slo, shi = source
    limit = torch.finfo(dtype).max if dtype in CHECKED else None
    if math.isfinite(slo) and math.isfinite(shi) and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ConfigError(
            f"{name}: casting {tensor.dtype} to {dtype} overflows (values up to {max(-slo, shi):.4g}, "
            f"{dtype} holds at most {limit:.4g}); keep a wider dtype (--torch-dtype bfloat16 or float32)"
        )
    if (lo, hi) == (0.0, 0.0) and (slo, shi) != (0.0, 0.0):
        raise ConfigError(
            f"{name}: casting {tensor.dtype} to {dtype} turns the non-zero tensor into all zeros (underflow); "
            "keep a wider dtype (--torch-dtype bfloat16 or float32)"
        )
    return out


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
