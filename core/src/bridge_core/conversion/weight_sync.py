"""The weight-sync plan for RL refits: computed once, reused by every export of the same model.

``AutoBridge.weight_sync_plan`` gathers, in one collective, every rank's export units, the slices of
each HF tensor its shards hold (``local_shards``) and a signature of its parameters and layout;
``WeightSyncPlan.build`` turns them into the plan (pure). The plan caches this rank's tasks for the
model it was made for, so ``export_hf_weights(model, plan=plan)`` neither re-plans nor communicates
before the first tensor. docs/python-api.md#weight-sync-plan-rl-refit is the contract.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bridge_core.conversion.export_plan import ExportPlan, itemsize
from bridge_core.conversion.plan import Task, export_parts
from bridge_core.errors import ConfigError, CoverageError
from bridge_core.mappings.base import MegatronParamMapping
from bridge_core.mappings.experts import FusedExpertMapping, FusedGatedExpertMapping
from bridge_core.mappings.fused import gated_shard_rows
from bridge_core.runtime.chunks import unwrap

if TYPE_CHECKING:
    from bridge_core.conversion.groups import ParallelLayout

FORMAT = "bridge-core weight-sync plan 1"
Box = tuple[tuple[int, int], ...]  # [start, stop) on every dimension of the HF tensor


@dataclass(frozen=True)
class Shard:
    """Ranks that hold the same slice of an HF tensor: ``box`` (``[start, stop)`` per dimension of
    the yielded tensor), or None where the mapping's layout is not described (the ranks then hold
    shards the tensor is computed from). ``megatron``: the parameter the slice lives in."""

    ranks: tuple[int, ...]
    box: Box | None
    megatron: str


@dataclass(frozen=True)
class Bucket:
    """Consecutive HF tensors (in export order) of at most ``bucket_bytes`` together (a bigger
    tensor is a bucket of its own)."""

    names: tuple[str, ...]
    nbytes: int


def _owner(cls: type, attr: str) -> type:
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def _chunk(full: int, n: int, i: int) -> list[tuple[int, int]]:
    """``torch.chunk(full, n)[i]`` as ``(first, count)``."""
    size = -(-full // n)
    first = min(i * size, full)
    return [(first, min(size, full - first))]


def _along(shape: tuple, dim: int, ranges: Iterable[tuple[int, int]]) -> list[Box]:
    full = [(0, s) for s in shape]
    return [tuple(full[:dim] + [(a, a + n)] + full[dim + 1 :]) for a, n in ranges if n > 0]


def _rows(m: MegatronParamMapping, task: Task, parts: list, ctx: Any, n: int, i: int) -> dict[str, list] | None:
    """HF row ranges of shard ``i`` of ``n`` for a mapping that places whole rows, else None."""
    cls = type(m)
    trusted = (
        issubclass(_owner(cls, "hf_row_layout"), _owner(cls, "hf_to_megatron"))
        and issubclass(_owner(cls, "hf_row_layout"), _owner(cls, "megatron_to_hf"))
        and issubclass(_owner(cls, "shard_rows"), _owner(cls, "split"))
    )
    if not trusted or m.tp_dim != 0:
        return None
    pieces = m.hf_row_layout({name: shape[0] for name, _, shape, _ in parts}, ctx)
    ranges = m.shard_rows(task.param.full_shape[0], n, i)
    if pieces is None or ranges is None:
        return None
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for first, count in ranges:
        for name, hf_row, row, rows in pieces:
            lo, hi = max(first, row), min(first + count, row + rows)
            if lo < hi:
                spans = out[name]
                start = hf_row + lo - row
                if spans and spans[-1][0] + spans[-1][1] == start:  # adjacent: one range
                    spans[-1] = (spans[-1][0], spans[-1][1] + hi - lo)
                else:
                    spans.append((start, hi - lo))
    return out


def _boxes(task: Task, parts: list, ctx: Any, n: int, i: int) -> dict[str, list[Box]] | None:
    """The boxes of each HF slice (the stacked slice, for stacked parts) that shard ``i`` holds."""
    m, shapes = task.mapping, {name: tuple(shape) for name, _, shape, _ in parts}
    if m.tp_dim is None or n == 1:
        return {name: [tuple((0, s) for s in shape)] for name, shape in shapes.items()}
    cls = type(m)
    if isinstance(m, FusedExpertMapping) and _owner(cls, "megatron_to_hf") is FusedExpertMapping:
        if len(task.param.full_shape) != 2 or _owner(cls, "split") not in (
            MegatronParamMapping,
            FusedGatedExpertMapping,
        ):
            return None
        full = task.param.full_shape[m.tp_dim]
        ranges = gated_shard_rows(full, n, i) if isinstance(m, FusedGatedExpertMapping) else _chunk(full, n, i)
        dim = 1 - m.tp_dim if m.transpose else m.tp_dim
        return {name: _along(shape, dim, ranges) for name, shape in shapes.items()}
    rows = _rows(m, task, parts, ctx, n, i)
    if rows is not None:
        return {name: _along(shape, 0, rows.get(name, [])) for name, shape in shapes.items()}
    identity = _owner(cls, "megatron_to_hf") is MegatronParamMapping and _owner(cls, "split") is MegatronParamMapping
    if identity and len(shapes) == 1:
        ((name, shape),) = shapes.items()
        return {name: _along(shape, m.tp_dim, _chunk(task.param.full_shape[m.tp_dim], n, i))}
    return None


def local_shards(
    tasks: list[Task], layout: ParallelLayout, config: Any, hf_config: Any
) -> list[tuple[str, Box | None, str]]:
    """``(hf_name, box or None, Megatron name)`` of every HF slice this rank's parameters hold
    (tied copies excluded; boxes in the coordinates of the yielded tensor)."""
    out: list[tuple[str, Box | None, str]] = []
    for task in tasks:
        if task.tied_copy:
            continue
        split = layout.for_param(task.param)
        parts = export_parts(task, config, hf_config, None)
        boxes = _boxes(task, parts, task.context(config, hf_config), split.size, split.index)
        for name, index, _, _ in parts:
            lead = () if index is None else ((index, index + 1),)
            if boxes is None:
                out.append((name, None, task.param.global_name))
            for box in [] if boxes is None else boxes[name]:
                out.append((name, (*lead, *box), task.param.global_name))
    return out


def signature(tasks: list[Task], layout: ParallelLayout) -> str:
    """This rank's parameters (names, shapes, dtypes, splits) and parallel layout, as a short digest."""
    rows = [(t.param.global_name, t.param.shape, str(t.param.dtype), t.param.tp_dim, t.tied_copy) for t in tasks]
    return hashlib.sha256(repr((*layout.key, rows)).encode()).hexdigest()[:16]


def plan_buckets(outputs: Iterable[tuple[str, tuple, torch.dtype]], bucket_bytes: int) -> tuple[Bucket, ...]:
    """Consecutive tensors into buckets of at most ``bucket_bytes``; a bigger tensor is alone."""
    buckets: list[Bucket] = []
    names: list[str] = []
    total = 0
    for name, shape, dtype in outputs:
        size = math.prod(shape) * itemsize(dtype)
        if names and total + size > bucket_bytes:
            buckets.append(Bucket(tuple(names), total))
            names, total = [], 0
        names.append(name)
        total += size
    if names:
        buckets.append(Bucket(tuple(names), total))
    return tuple(buckets)


def _param_ids(model: Any) -> tuple[int, ...]:
    chunks = list(model) if isinstance(model, (list, tuple)) else [model]
    return tuple(id(p) for c in chunks for p in unwrap(c).parameters())


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class WeightSyncPlan:
    """What every refit of one model sends: the export plan, the export dtype, the shard geometry of
    every HF tensor (``geometry[hf_name]``: its ``Shard``s) and the bucket plan. The same on every
    rank; picklable, and ``to_dict()`` is plain JSON. This rank's tasks for the model it was made for
    are cached on it (they hold the model's parameters; neither pickled nor compared)."""

    export: ExportPlan
    dtype: torch.dtype
    bucket_bytes: int
    buckets: tuple[Bucket, ...]
    geometry: dict[str, tuple[Shard, ...]]
    signatures: tuple[str, ...]
    _bound: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, export: ExportPlan, dtype: torch.dtype, bucket_bytes: int, per_rank: list[tuple[list, str]]
    ) -> WeightSyncPlan:
        """The plan from the export plan and every rank's ``(local_shards, signature)`` (pure)."""
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes <= 0:
            raise ConfigError(f"bucket_bytes must be a positive number of bytes, got {bucket_bytes!r}")
        holders: dict[tuple, list[int]] = defaultdict(list)
        for rank, (shards, _) in enumerate(per_rank):
            for name, box, megatron in shards:
                holders[(name, box, megatron)].append(rank)
        by_name: dict[str, list[Shard]] = defaultdict(list)
        for (name, box, megatron), ranks in holders.items():
            by_name[name].append(Shard(tuple(sorted(set(ranks))), box, megatron))
        geometry = {
            name: tuple(sorted(by_name[name], key=lambda s: (s.box or (), s.megatron, s.ranks)))
            for name, _, _ in export.outputs
        }
        buckets = plan_buckets(export.outputs, bucket_bytes)
        return cls(export, dtype, bucket_bytes, buckets, geometry, tuple(sig for _, sig in per_rank))

    @property
    def world(self) -> int:
        return len(self.signatures)

    @property
    def tensors(self) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
        """``(hf_name, shape, dtype)`` of every tensor an export yields, in order."""
        return self.export.outputs

    def held_by(self, rank: int) -> dict[str, list[Box | None]]:
        """HF name -> the boxes of it that ``rank``'s parameters hold."""
        out: dict[str, list[Box | None]] = defaultdict(list)
        for name, shards in self.geometry.items():
            for shard in shards:
                if rank in shard.ranks:
                    out[name].append(shard.box)
        return dict(out)

    def bind(self, model: Any, build: Callable[[], tuple[list[Task], Any, Any]]) -> tuple[list[Task], Any, Any]:
        """This rank's ``(tasks, layout, config)`` for ``model``: cached for the model the plan was made
        for (the same parameter objects), else built and checked against the plan."""
        ids = _param_ids(model)
        cached = self._bound.get("tasks")
        if cached is not None and cached[0] == ids:
            return cached[1]
        tasks, layout, config = build()
        if layout.world != self.world or signature(tasks, layout) != self.signatures[layout.rank]:
            raise ConfigError(
                f"plan: made for another model or parallel layout (world {self.world}, this rank's parameters "
                f"differ on rank {layout.rank} of {layout.world}); make one with weight_sync_plan(model)"
            )
        self.remember(model, tasks, layout, config)
        return tasks, layout, config

    def remember(self, model: Any, tasks: list[Task], layout: Any, config: Any) -> None:
        self._bound["tasks"] = (_param_ids(model), (tasks, layout, config))

    def bucketed(self, stream: Iterable[tuple[str, torch.Tensor]]) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Group an export stream made with this plan into its buckets, one list at a time."""
        it = iter(stream)
        for bucket in self.buckets:
            items = []
            for want in bucket.names:
                name, tensor = next(it, (None, None))
                if name != want:
                    raise CoverageError(f"weight sync: the export yielded {name}, the plan expects {want}")
                items.append((name, tensor))
            yield items
        extra = next(it, None)  # runs the stream to its end (its last collectives, its warnings)
        if extra is not None:
            raise CoverageError(f"weight sync: the export yielded {extra[0]} after the planned tensors")

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON (dtypes by name; boxes as ``[[start, stop], ...]``, or null)."""
        stacked = self.export.stacked
        return {
            "format": FORMAT,
            "dtype": _dtype_name(self.dtype),
            "world": self.world,
            "bucket_bytes": self.bucket_bytes,
            "nbytes": self.export.nbytes,
            "tensors": [
                {
                    "name": name,
                    "shape": list(shape),
                    "dtype": _dtype_name(dtype),
                    "stacked": stacked.get(name),
                    "shards": [
                        {
                            "ranks": list(s.ranks),
                            "box": None if s.box is None else [list(b) for b in s.box],
                            "megatron": s.megatron,
                        }
                        for s in self.geometry[name]
                    ],
                }
                for name, shape, dtype in self.export.outputs
            ],
            "buckets": [{"names": list(b.names), "nbytes": b.nbytes} for b in self.buckets],
            "units": [
                {
                    "megatron": u.global_name,
                    "owner": u.owner,
                    "parts": [[n, i, list(s), _dtype_name(d)] for n, i, s, d in u.parts],
                }
                for u in self.export.units
            ],
            "signatures": list(self.signatures),
        }

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_bound"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _bound={})
