"""The parallel sizes of a run and this process's place in it.

Standard library only, so that the ``bridgectl`` launcher and the progress lines never import torch:
``rank()`` and ``world_size()`` ask ``torch.distributed`` only when something else imported it.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from bridge_core.errors import ConfigError


@dataclass(frozen=True)
class Parallelism:
    """Tensor, pipeline, virtual-pipeline, expert and expert-tensor parallel sizes.

    ``etp=None`` means the tensor parallel size. ``vp`` is keyword-only (``Parallelism(2, 1, 4)`` is
    tp=2, pp=1, ep=4, as on the command line).
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None
    vp: int | None = field(default=None, kw_only=True)

    @property
    def world_size(self) -> int:
        """The fewest ranks these sizes run on (the smallest world ``check_world`` accepts): tp x pp x
        the data-parallel size that expert parallelism needs (tp x dp must be a multiple of ep x etp)."""
        experts = self.ep * (self.etp or self.tp)
        return self.tp * self.pp * (experts // math.gcd(self.tp, experts))

    def check_world(self, world: int) -> None:
        """Refuse a world size these sizes cannot be laid out on (one line naming the sizes)."""
        if world % (self.tp * self.pp):
            raise ConfigError(
                f"world size {world} is not a multiple of tensor parallel {self.tp} x pipeline parallel {self.pp}"
            )
        dp = world // (self.tp * self.pp)
        etp = self.etp or self.tp
        if (dp * self.tp) % (self.ep * etp):
            raise ConfigError(
                f"world size {world} cannot hold expert parallel {self.ep} x expert tensor parallel {etp} "
                f"(tensor parallel {self.tp} x data parallel {dp} must be a multiple of it)"
            )

    def apply(self, provider: Any) -> Any:
        """Set these sizes on a model provider (``vp`` only when given) and return it."""
        provider.tensor_model_parallel_size = self.tp
        provider.pipeline_model_parallel_size = self.pp
        provider.expert_model_parallel_size = self.ep
        provider.expert_tensor_parallel_size = self.etp
        if self.vp is not None:
            provider.virtual_pipeline_model_parallel_size = self.vp
        return provider


ParallelSizes = Parallelism  # the name ``runtime.parallel`` used for the same sizes


def _group() -> Any:
    """``torch.distributed`` when it is imported and its default group is up, else None (no import)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    """This process's global rank: ``RANK`` when set (torchrun and bridgectl's rank processes start
    the group from it), else torch.distributed's when a group is up, else 0."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    dist = _group()
    return dist.get_rank() if dist is not None else 0


def world_size() -> int:
    """The number of ranks: ``WORLD_SIZE`` when set, else torch.distributed's when a group is up, else 1."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    dist = _group()
    return dist.get_world_size() if dist is not None else 1
