"""Import execution: read each HF tensor once per tensor-parallel group, format, split, scatter.

Tasks whose rows can be read straight into the parameter skip the scatter (``direct.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from bridge_core.conversion.direct import plan_reads
from bridge_core.conversion.finite import NonfiniteScan, checked_cast, warn_nonfinite
from bridge_core.conversion.groups import ParallelLayout
from bridge_core.conversion.row_reader import RowReader, read_threads
from bridge_core.conversion.tasks import Task
from bridge_core.errors import CoverageError

log = logging.getLogger(__name__)


class SliceView(Mapping[str, torch.Tensor]):
    """A state-dict view returning ``tensor[index]`` of stacked tensors (read without the rest)."""

    def __init__(self, source: Any, index: int):
        self.source, self.index = source, index

    def __getitem__(self, key: str) -> torch.Tensor:
        if hasattr(self.source, "get_slice"):
            return self.source.get_slice(key, self.index)
        return self.source[key][self.index]

    def __iter__(self):
        return iter(self.source)

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class LoadReport:
    """What ``load_hf_weights`` did on this rank."""

    tensors: int = 0
    direct: int = 0  # of them, read straight into the parameter (``direct.py``)
    bytes_read: int = 0
    seconds: float = 0.0
    downcast: list[str] = field(default_factory=list)
    nonfinite: list[str] = field(default_factory=list)  # HF tensors holding NaN/Inf (over all ranks)


def read_full(task: Task, bridge: Any, source: Any, config: Any) -> torch.Tensor:
    """The full Megatron tensor for ``task``, from the HF source through the bridge hook."""
    view = source if task.mapping.index is None else SliceView(source, task.mapping.index)
    hf = bridge.maybe_modify_loaded_hf_weight(task.mapping.hf_param, view)
    full = task.mapping.hf_to_megatron(hf, task.context(config, bridge.hf_config))
    if tuple(full.shape) != task.param.full_shape:
        raise CoverageError(f"{task.param.global_name}: expected {task.param.full_shape}, got {tuple(full.shape)}")
    return full


def load_general(
    task: Task, bridge: Any, source: Any, config: Any, split: Any, checkpoint_dtype: Any, report: LoadReport
) -> int:
    """Read, format and split on the group's leader, scatter to the others; returns the bytes read here."""
    param = task.param.tensor
    shards: list[torch.Tensor] | None = None
    nbytes = 0
    if split.index == 0:
        full = read_full(task, bridge, source, config)
        nbytes = full.numel() * full.element_size()
        if (
            full.dtype.itemsize > param.dtype.itemsize
            and full.is_floating_point()
            and checkpoint_dtype is not None
            and full.dtype != checkpoint_dtype
        ):
            report.downcast.append(task.param.global_name)
        full = checked_cast(full, param.dtype, " + ".join(task.hf_keys), device=param.device)
        shards = [s.contiguous() for s in task.mapping.split(full, split.size)]
    with torch.no_grad():
        if split.size == 1:
            assert shards is not None, "one rank: it is the leader"
            param.copy_(shards[0])
        else:
            # Straight into the parameter when its memory allows: no temporary, no second copy.
            out = param if param.is_contiguous() else torch.empty_like(param)
            dist.scatter(out, shards, src=split.leader, group=split.group)
            if out is not param:
                param.copy_(out)
    return nbytes


def load_tasks(
    tasks: list[Task],
    bridge: Any,
    source: Any,
    config: Any,
    layout: ParallelLayout,
    checkpoint_dtype: torch.dtype | None,
    progress: Any = None,
) -> LoadReport:
    """Fill every task's parameter. Every member of a group walks the same sorted task list."""
    report = LoadReport()
    start = time.perf_counter()
    if progress is not None:
        progress.begin(len(tasks), sum(t.param.tensor.numel() * t.param.tensor.element_size() for t in tasks))
    device = tasks[0].param.tensor.device if tasks else None
    reader = RowReader(read_threads(device), device)

    def collect(wait: bool = False) -> None:
        for nbytes, param_bytes in reader.finished(wait):
            report.bytes_read += nbytes
            report.tensors += 1
            report.direct += 1
            if progress is not None:
                progress.update(param_bytes)

    try:
        for task in tasks:
            param = task.param.tensor
            split = layout.for_param(task.param)
            reads = plan_reads(task, bridge, source, config, split)
            if reads is not None:  # this rank reads its own rows into the parameter; nothing is sent
                reader.submit(source, reads, param)
                collect()
                continue
            report.bytes_read += load_general(task, bridge, source, config, split, checkpoint_dtype, report)
            report.tensors += 1
            if progress is not None:
                progress.update(param.numel() * param.element_size())
            collect()
        collect(wait=True)
    finally:
        reader.close()
    report.seconds = time.perf_counter() - start
    scan = NonfiniteScan()
    for task in tasks:
        if not task.tied_copy:
            scan.add(task.param.tensor, *task.hf_keys)
    report.nonfinite = warn_nonfinite(scan.names(), "HF", layout.world)
    if report.downcast:
        log.warning(
            "%d tensor(s) stored in higher precision than the checkpoint were cast down to %s: %s; "
            "load with torch_dtype=float32 to keep them",
            len(report.downcast),
            tasks[0].param.dtype,
            ", ".join(report.downcast[:8]),
        )
    return report
