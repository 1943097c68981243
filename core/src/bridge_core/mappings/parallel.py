"""Single-tensor mappings: column-parallel, row-parallel, replicated, vocabulary and automatic."""

from __future__ import annotations

import torch

from bridge_core.mappings.base import MappingContext, MegatronParamMapping, RowPiece, Tensor


class ColumnParallelMapping(MegatronParamMapping):
    """Split along dim 0 (``ColumnParallelLinear`` weights and biases, embeddings)."""

    tp_dim = 0


class RowParallelMapping(MegatronParamMapping):
    """Split along dim 1 (``RowParallelLinear`` weights; their biases are replicated)."""

    tp_dim = 1


class ReplicatedMapping(MegatronParamMapping):
    """The same full tensor on every tensor-parallel rank (norms, routers, row-parallel biases)."""

    tp_dim = None


class AutoMapping(MegatronParamMapping):
    """Column, row or replicated, read from the Megatron parameter itself at planning time.

    megatron-core marks tensor-parallel parameters with ``tensor_model_parallel=True`` and their
    ``partition_dim``; anything unmarked is replicated. The planner binds ``tp_dim`` accordingly.
    """

    tp_dim = None
    infer_tp_dim = True


def pad_rows(weight: Tensor, rows: int) -> Tensor:
    """Append zero rows up to ``rows`` (Megatron's padded vocabulary)."""
    if weight.shape[0] > rows:
        raise ValueError(f"cannot pad {weight.shape[0]} rows down to {rows}")
    if weight.shape[0] == rows:
        return weight
    pad = torch.zeros((rows - weight.shape[0], *weight.shape[1:]), dtype=weight.dtype, device=weight.device)
    return torch.cat([weight, pad], dim=0)


class VocabParallelMapping(ColumnParallelMapping):
    """Word embeddings and output layer: pad the vocabulary on import, trim it on export.

    Megatron pads the vocabulary to a multiple of ``make_vocab_size_divisible_by * TP``; the padded
    rows are zeros on import and are never written back to HF (trimmed to ``hf_config.vocab_size``).
    """

    hf_param: str

    def hf_to_megatron(self, hf_weights: Tensor, ctx: MappingContext) -> Tensor:
        return pad_rows(hf_weights, ctx.megatron_shape[0])

    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        return super().hf_row_layout(hf_rows, ctx)  # the HF rows first; the padded rows stay zeros

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        return {self.hf_param: weight[: ctx.hf_config.vocab_size]}
