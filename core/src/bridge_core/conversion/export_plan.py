"""The export plan: what an export yields, in which order, and who produces each piece (pure).

Each rank lists its own export units (``local_units``: one per Megatron parameter it owns, the leader
of its tensor-parallel group in data-parallel replica 0); the lists of every rank, gathered once by
the caller, become an ``ExportPlan`` (``ExportPlan.from_rank_units``). Nothing here communicates, so
the plan can be built and tested without a process group.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch

from bridge_core.conversion.plan import Task, export_parts, natural_key
from bridge_core.errors import CoverageError

if TYPE_CHECKING:
    from bridge_core.conversion.groups import ParallelLayout

# (hf_name, shape, dtype) of one yielded tensor: what ``on_plan`` receives, one per tensor.
Output = tuple[str, tuple[int, ...], torch.dtype]


@dataclass(frozen=True)
class Unit:
    """One exported Megatron parameter: its owner rank and the HF parts it produces
    (``(hf_name, slice index or None, shape, dtype)``)."""

    global_name: str
    owner: int
    parts: tuple[tuple[str, int | None, tuple, torch.dtype], ...]


def local_units(
    tasks: list[Task], layout: ParallelLayout, config: Any, hf_config: Any, dtype: torch.dtype | None
) -> list[Unit]:
    """The units this rank exports (meta dry-runs of the mappings; no data read)."""
    mine = []
    for task in tasks:
        split = layout.for_param(task.param)
        if task.tied_copy or split.index != 0 or not split.replica_zero:
            continue
        parts = tuple(export_parts(task, config, hf_config, dtype))
        mine.append(Unit(task.param.global_name, layout.rank, parts))
    return mine


def whole_params(tasks: list[Task], layout: ParallelLayout) -> list[str]:
    """The parameters this rank holds whole (not split by tensor parallelism; tied copies left out)."""
    return [t.param.global_name for t in tasks if not t.tied_copy and layout.for_param(t.param).size == 1]


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _ordered(units: Iterable[Unit]) -> list[Unit]:
    """Natural order of the Megatron names, except that the slices of one stacked HF tensor run
    back to back (at the first slice's place), so at most one stacked tensor is in assembly."""
    ordered = sorted(units, key=lambda u: natural_key(u.global_name))
    groups: dict[str, list[Unit]] = defaultdict(list)
    for unit in ordered:
        stacked = next((name for name, index, _, _ in unit.parts if index is not None), None)
        if stacked is not None:
            groups[stacked].append(unit)
    out, placed = [], set()
    for unit in ordered:
        stacked = next((name for name, index, _, _ in unit.parts if index is not None), None)
        if stacked is None:
            out.append(unit)
        elif stacked not in placed:
            placed.add(stacked)
            out.extend(groups[stacked])
    return out


@dataclass(frozen=True)
class ExportPlan:
    """Every export unit in the order all ranks walk them, and what the receiving ranks get.

    ``outputs``: ``(hf_name, shape, dtype)`` of every yielded tensor, in yield order. A stacked
    tensor (parts with a slice index, e.g. MoE experts) comes out when its last slice arrives, with
    the slice count (``stacked[hf_name]``) as its first dimension. ``replicated``: the units every
    rank of a world of several holds whole (data- or expert-parallel replicas): where every rank
    receives, each formats these itself and nothing is sent.
    """

    units: tuple[Unit, ...]
    outputs: tuple[Output, ...]
    stacked_counts: tuple[tuple[str, int], ...]
    replicated: frozenset[str] = frozenset()

    @classmethod
    def from_rank_units(
        cls, per_rank: Iterable[Iterable[Unit]], whole: Iterable[Iterable[str]] | None = None
    ) -> ExportPlan:
        """The plan from every rank's ``local_units`` (a parameter owned by two ranks is an error)
        and, optionally, every rank's ``whole_params``."""
        by_name: dict[str, Unit] = {}
        for unit in (u for rank_units in per_rank for u in rank_units):
            other = by_name.setdefault(unit.global_name, unit)
            if other.owner != unit.owner:
                raise CoverageError(f"{unit.global_name} is exported by ranks {other.owner} and {unit.owner}")
        units = _ordered(by_name.values())
        counts: dict[str, int] = defaultdict(int)
        for unit in units:
            for name, index, _, _ in unit.parts:
                counts[name] += index is not None
        seen: dict[str, int] = defaultdict(int)
        outputs: list[Output] = []
        for unit in units:
            for name, index, shape, dtype in unit.parts:
                if index is None:
                    outputs.append((name, tuple(shape), dtype))
                    continue
                seen[name] += 1
                if seen[name] == counts[name]:
                    outputs.append((name, (counts[name], *shape), dtype))
        stacked = tuple((name, n) for name, n in counts.items() if n)
        held = [set(names) for names in whole] if whole is not None else []
        replicated = frozenset(set.intersection(*held) & by_name.keys()) if len(held) > 1 else frozenset()
        return cls(tuple(units), tuple(outputs), stacked, replicated)

    @cached_property
    def stacked(self) -> dict[str, int]:
        """HF name -> slice count of every stacked tensor."""
        return dict(self.stacked_counts)

    @property
    def parts(self) -> int:
        """How many tensors cross the wire (a stacked tensor counts once per slice)."""
        return sum(len(u.parts) for u in self.units)

    @cached_property
    def nbytes(self) -> int:
        """Bytes of every yielded tensor together."""
        return sum(math.prod(shape) * itemsize(dtype) for _, shape, dtype in self.outputs)

    def check_produced(self, unit: Unit, produced: dict[str, torch.Tensor]) -> None:
        """The tensors a rank produced for ``unit`` are the planned ones, in the planned order."""
        got = [(n, tuple(t.shape)) for n, t in produced.items()]
        want = [(n, tuple(s)) for n, _, s, _ in unit.parts]
        if got != want:
            raise CoverageError(f"{unit.global_name}: export produced {got}, planned {want}")
