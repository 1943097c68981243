"""Phi-3's fused HF tensors: ``qkv_proj`` rows [Q; K; V] and ``gate_up_proj`` rows [gate; up]."""

from __future__ import annotations

import torch

from bridge_core.mappings import MappingContext, MegatronParamMapping
from bridge_core.mappings.base import RowPiece, Tensor
from bridge_core.mappings.fused import gated_shard_rows, merge_gated, merge_qkv, split_gated, split_qkv


def _dims(ctx: MappingContext) -> tuple[int, int, int]:
    c = ctx.config
    return c.num_attention_heads, c.num_query_groups or c.num_attention_heads, c.kv_channels


class FusedQKVMapping(MegatronParamMapping):
    """``linear_qkv`` <-> one HF tensor ``[Q; K; V]`` (``nh*d``, ``ng*d``, ``ng*d`` rows), group-interleaved."""

    tp_dim = 0

    def hf_to_megatron(self, hf_weights: Tensor, ctx: MappingContext) -> Tensor:
        heads, groups, dim = _dims(ctx)
        q, k, v = torch.split(hf_weights, [heads * dim, groups * dim, groups * dim], dim=0)
        return merge_qkv(q, k, v, heads, groups, dim)

    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        heads, groups, dim = _dims(ctx)
        if hf_rows[self.hf_param] != (heads + 2 * groups) * dim:
            return None
        q_rows, k_start, v_start = heads // groups * dim, heads * dim, (heads + groups) * dim
        width = q_rows + 2 * dim
        out: list[RowPiece] = []
        for g in range(groups):
            out += [
                (self.hf_param, g * q_rows, g * width, q_rows),
                (self.hf_param, k_start + g * dim, g * width + q_rows, dim),
                (self.hf_param, v_start + g * dim, g * width + q_rows + dim, dim),
            ]
        return out

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        return {self.hf_param: torch.cat(split_qkv(weight, *_dims(ctx)), dim=0)}


class FusedGatedMLPMapping(MegatronParamMapping):
    """``linear_fc1`` <-> one HF tensor already ``[gate; up]``; each TP rank holds ``[gate_r; up_r]``."""

    tp_dim = 0

    def split(self, full: Tensor, n: int) -> list[Tensor]:
        return split_gated(full, n)

    def shard_rows(self, full_rows: int, n: int, index: int) -> list[tuple[int, int]] | None:
        return gated_shard_rows(full_rows, n, index)

    def merge(self, shards: list[Tensor]) -> Tensor:
        return merge_gated(shards)
