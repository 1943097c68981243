"""Mappings that fuse several HF tensors into one Megatron tensor: QKV and gated MLP."""

from __future__ import annotations

import torch

from bridge_core.mappings.base import MappingContext, MegatronParamMapping, RowPiece, Tensor


def merge_qkv(q: Tensor, k: Tensor, v: Tensor, num_heads: int, num_groups: int, head_dim: int) -> Tensor:
    """HF q/k/v (weights [out, in] or biases [out]) -> Megatron's grouped layout.

    Megatron stores, for each of the ``num_groups`` KV groups, its ``num_heads // num_groups`` query
    heads, then its key head, then its value head.
    """
    rest = q.shape[1:]
    q = q.reshape(num_groups, (num_heads // num_groups) * head_dim, *rest)
    k = k.reshape(num_groups, head_dim, *rest)
    v = v.reshape(num_groups, head_dim, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)


def split_qkv(qkv: Tensor, num_heads: int, num_groups: int, head_dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """Megatron's grouped QKV -> HF q, k, v (inverse of ``merge_qkv``)."""
    rest = qkv.shape[1:]
    q_rows = (num_heads // num_groups) * head_dim
    grouped = qkv.reshape(num_groups, q_rows + 2 * head_dim, *rest)
    q = grouped[:, :q_rows].reshape(-1, *rest)
    k = grouped[:, q_rows : q_rows + head_dim].reshape(-1, *rest)
    v = grouped[:, q_rows + head_dim :].reshape(-1, *rest)
    return q, k, v


def qkv_row_layout(
    names: tuple[str, str, str], rows: tuple[int, int, int], num_heads: int, num_groups: int, head_dim: int
) -> list[RowPiece] | None:
    """``merge_qkv`` as row pieces: per group, its query rows, then its key rows, then its value rows.

    ``rows`` are the q, k, v row counts (weights and biases alike); None when they do not fit the heads.
    """
    q_rows = (num_heads // num_groups) * head_dim
    if rows != (num_groups * q_rows, num_groups * head_dim, num_groups * head_dim):
        return None
    width = q_rows + 2 * head_dim
    q, k, v = names
    out: list[RowPiece] = []
    for g in range(num_groups):
        out += [
            (q, g * q_rows, g * width, q_rows),
            (k, g * head_dim, g * width + q_rows, head_dim),
            (v, g * head_dim, g * width + q_rows + head_dim, head_dim),
        ]
    return out


def gated_shard_rows(full_rows: int, n: int, index: int) -> list[tuple[int, int]]:
    """``split_gated(full, n)[index]`` as full-tensor row ranges: its gate rows, then its up rows."""
    half = full_rows // 2
    size = half // n
    return [(index * size, size), (half + index * size, size)]


def split_gated(full: Tensor, n: int) -> list[Tensor]:
    """``[gate; up]`` -> ``n`` shards, each ``[gate_i; up_i]`` (Megatron's per-rank layout)."""
    if n == 1:
        return [full]  # already [gate; up]: no copy
    gate, up = torch.chunk(full, 2, dim=0)
    return [torch.cat([g, u], dim=0) for g, u in zip(torch.chunk(gate, n), torch.chunk(up, n))]


def merge_gated(shards: list[Tensor]) -> Tensor:
    """Per-rank ``[gate_i; up_i]`` shards -> ``[gate; up]`` (inverse of ``split_gated``)."""
    if len(shards) == 1:
        return shards[0]  # already [gate; up]: no copy
    pairs = [torch.chunk(s, 2, dim=0) for s in shards]
    return torch.cat([g for g, _ in pairs] + [u for _, u in pairs], dim=0)


class QKVMapping(MegatronParamMapping):
    """``linear_qkv`` weight or bias <-> HF ``{"q", "k", "v"}`` projections (grouped-query aware)."""

    tp_dim = 0
    hf_param: dict[str, str]

    def __init__(self, megatron_param: str, q: str, k: str, v: str):
        super().__init__(megatron_param, {"q": q, "k": k, "v": v})

    @staticmethod
    def _dims(ctx: MappingContext) -> tuple[int, int, int]:
        c = ctx.config
        return c.num_attention_heads, c.num_query_groups or c.num_attention_heads, c.kv_channels

    def hf_to_megatron(self, hf_weights: dict[str, Tensor], ctx: MappingContext) -> Tensor:
        return merge_qkv(hf_weights["q"], hf_weights["k"], hf_weights["v"], *self._dims(ctx))

    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        q, k, v = self.hf_param["q"], self.hf_param["k"], self.hf_param["v"]
        return qkv_row_layout((q, k, v), (hf_rows[q], hf_rows[k], hf_rows[v]), *self._dims(ctx))

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        q, k, v = split_qkv(weight, *self._dims(ctx))
        return {self.hf_param["q"]: q, self.hf_param["k"]: k, self.hf_param["v"]: v}


class GatedMLPMapping(MegatronParamMapping):
    """``linear_fc1`` of a gated MLP <-> HF ``{"gate", "up"}``; gate and up are split per TP rank."""

    tp_dim = 0
    hf_param: dict[str, str]

    def __init__(self, megatron_param: str, gate: str, up: str):
        super().__init__(megatron_param, {"gate": gate, "up": up})

    def hf_to_megatron(self, hf_weights: dict[str, Tensor], ctx: MappingContext) -> Tensor:
        return torch.cat([hf_weights["gate"], hf_weights["up"]], dim=0)

    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        gate, up = self.hf_param["gate"], self.hf_param["up"]
        return [(gate, 0, 0, hf_rows[gate]), (up, 0, hf_rows[gate], hf_rows[up])]

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        gate, up = torch.chunk(weight, 2, dim=0)
        return {self.hf_param["gate"]: gate, self.hf_param["up"]: up}

    def split(self, full: Tensor, n: int) -> list[Tensor]:
        return split_gated(full, n)

    def shard_rows(self, full_rows: int, n: int, index: int) -> list[tuple[int, int]] | None:
        return gated_shard_rows(full_rows, n, index)

    def merge(self, shards: list[Tensor]) -> Tensor:
        return merge_gated(shards)
