"""The parallel sizes of a run (torch-free, so that the ``bridgectl`` launcher never imports torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Parallelism:
    """Tensor, pipeline, expert and expert-tensor parallel sizes asked for on the command line."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None

    @property
    def world_size(self) -> int:
        """Ranks needed: tp x pp x the data-parallel size that expert parallelism requires."""
        experts = self.ep * (self.etp or self.tp)
        dp = experts // math.gcd(self.tp, experts)
        return self.tp * self.pp * dp

    def apply(self, provider: Any) -> Any:
        provider.tensor_model_parallel_size = self.tp
        provider.pipeline_model_parallel_size = self.pp
        provider.expert_model_parallel_size = self.ep
        provider.expert_tensor_parallel_size = self.etp
        return provider
