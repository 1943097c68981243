"""Mixture-of-experts mappings.

Per-expert HF checkpoints (``experts.E.gate_proj.weight``) need no special class: use
``GatedMLPMapping``/``RowParallelMapping`` with a second ``*`` for the (global) expert index.
HF checkpoints that stack all experts in one tensor ``[E, ...]`` use the fused mappings below: the
Megatron name has one more ``*`` than the HF name, and that expert index selects the slice.
"""

from __future__ import annotations

from bridge_core.mappings.base import MappingContext, MegatronParamMapping, Tensor
from bridge_core.mappings.fused import merge_gated, split_gated


class FusedExpertMapping(MegatronParamMapping):
    """One expert's weight <-> slice ``[E]`` of a stacked HF tensor ``[num_experts, ...]``.

    ``transpose=True`` when HF stores the slice as ``[in, out]`` (Megatron keeps ``[out, in]``).
    ``tp_dim`` is the split dimension of the Megatron weight (1 for ``linear_fc2``).
    """

    stacked = True
    hf_param: str

    def __init__(self, megatron_param: str, hf_param: str, *, tp_dim: int | None = 1, transpose: bool = False):
        super().__init__(megatron_param, hf_param)
        self.tp_dim = tp_dim
        self.transpose = transpose

    def hf_to_megatron(self, hf_weights: Tensor, ctx: MappingContext) -> Tensor:
        return hf_weights.transpose(0, 1).contiguous() if self.transpose else hf_weights

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        return {self.hf_param: weight.transpose(0, 1).contiguous() if self.transpose else weight}


class FusedGatedExpertMapping(FusedExpertMapping):
    """One expert's gated ``linear_fc1`` <-> slice ``[E]`` of a stacked HF ``gate_up`` tensor.

    The slice holds gate rows then up rows (``[2 * ffn, hidden]``, or transposed); tensor parallel
    splits gate and up separately, as for ``GatedMLPMapping``.
    """

    def __init__(self, megatron_param: str, hf_param: str, *, transpose: bool = False):
        super().__init__(megatron_param, hf_param, tp_dim=0, transpose=transpose)

    def split(self, full: Tensor, n: int) -> list[Tensor]:
        return split_gated(full, n)

    def merge(self, shards: list[Tensor]) -> Tensor:
        return merge_gated(shards)
