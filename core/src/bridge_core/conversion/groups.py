"""The tensor-parallel group a parameter is split over, and this rank's place in it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from bridge_core.conversion.params import ParamInfo


@dataclass(frozen=True)
class SplitGroup:
    """A process group (None when alone), its size, this rank's index and the leader's global rank."""

    group: Any
    size: int
    index: int
    leader: int
    replica_zero: bool
    ranks: tuple[int, ...] = ()  # global ranks of the members, in group order


class ParallelLayout:
    """Reads megatron-core's parallel state once: groups for dense and expert parameters."""

    def __init__(self) -> None:
        from megatron.core import parallel_state as ps

        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.tp = self._group(ps.get_tensor_model_parallel_group(), ps.get_data_parallel_rank() == 0)
        self.etp = self._group(ps.get_expert_tensor_parallel_group(), ps.get_expert_data_parallel_rank() == 0)
        self.ep_rank = ps.get_expert_model_parallel_rank()

    @staticmethod
    def _group(group: Any, replica_zero: bool) -> SplitGroup:
        ranks = dist.get_process_group_ranks(group)
        return SplitGroup(group, len(ranks), ranks.index(dist.get_rank()), ranks[0], replica_zero, tuple(ranks))

    def for_param(self, param: ParamInfo) -> SplitGroup:
        return self.etp if param.is_expert else self.tp

    @property
    def key(self) -> tuple:
        """The layout by ranks alone (not the group handles): equal for new groups of the same ranks."""
        groups = (self.world, self.rank, self.tp.ranks, self.etp.ranks, self.ep_rank)
        return groups, (self.tp.replica_zero, self.etp.replica_zero)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (one collective; no process group or a world of one: ``[obj]``)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
