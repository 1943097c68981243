"""The export tasks and plans of a model exported without a weight-sync plan, kept for its next export.

Planning an export (collecting the parameters, building the tasks, dry-running every mapping) costs
about 20 us per tensor: as much as moving a Qwen3-MoE layer's 400 small tensors to the host. So
``export_hf_weights(model)`` keeps them on the model's first chunk (so they live and die with it) and
reuses them while this rank's parameters (the same objects, shapes, dtypes and devices) and parallel
layout stay as they were; with several ranks, only when every rank's do (one small collective), so
the ranks' collectives always match. A copy or pickle of the model carries nothing of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bridge_core.conversion.export import gather_plan
from bridge_core.conversion.export_plan import ExportPlan
from bridge_core.conversion.groups import ParallelLayout, all_gather_objects
from bridge_core.conversion.tasks import Task
from bridge_core.runtime.chunks import unwrap

_ATTRIBUTE = "_bridge_export_cache"
Build = Callable[[], tuple[list[Task], ParallelLayout, Any]]


class _Holder:
    """What a model chunk carries: ``owner`` (a bridge's token) and its cached state. Copies and pickles
    of the chunk get an empty one."""

    def __init__(self) -> None:
        self.owner: object = None
        self.stamp: tuple = ()
        self.tasks: tuple[list[Task], Any] | None = None  # and the model's config
        self.plans: dict[torch.dtype | None, ExportPlan] = {}

    def __reduce__(self) -> tuple:
        return (_Holder, ())

    def __deepcopy__(self, memo: dict) -> _Holder:
        return _Holder()


def _stamp(chunks: list[torch.nn.Module], layout: ParallelLayout) -> tuple:
    params = tuple((id(p), p.dtype, p.shape, p.device) for c in chunks for p in unwrap(c).parameters())
    return params, layout.key


def cached_export(
    chunks: list[torch.nn.Module], owner: object, dtype: torch.dtype | None, hf_config: Any, build: Build
) -> tuple[list[Task], ParallelLayout, Any, ExportPlan]:
    """``(tasks, layout, config, plan)`` of this export: cached, or built by ``build()`` and
    ``gather_plan`` (every rank calls it). ``owner`` tells one bridge's cache from another's (and a
    new token from the same bridge drops it). The layout is read afresh: its process groups may be
    new ones of the same ranks."""
    first = unwrap(chunks[0])
    holder = first.__dict__.get(_ATTRIBUTE)
    if not isinstance(holder, _Holder):
        holder = _Holder()
        first.__dict__[_ATTRIBUTE] = holder
    layout = ParallelLayout()
    stamp = _stamp(chunks, layout)
    mine = holder.owner is owner and holder.stamp == stamp and holder.tasks is not None
    if all(all_gather_objects(mine and dtype in holder.plans)):
        assert holder.tasks is not None
        tasks, config = holder.tasks
        return tasks, layout, config, holder.plans[dtype]
    if not mine:
        tasks, _, config = build()
        holder.owner, holder.stamp, holder.tasks, holder.plans = owner, stamp, (tasks, config), {}
    assert holder.tasks is not None
    tasks, config = holder.tasks
    holder.plans[dtype] = gather_plan(tasks, layout, config, hf_config, dtype)[0]
    return tasks, layout, config, holder.plans[dtype]
