"""LoRA and DoRA around megatron-core's tensor-parallel linears, split the way their base layer splits.

``y = W x + (alpha / r) B A x`` (LoRA); DoRA rescales each output row of ``W + (alpha / r) B A`` to a
learned magnitude ``m``: ``y = m / ||W + s B A||_row * (W + s B A) x``, the norm detached as in the
DoRA paper and ``peft``. A column-parallel base (``linear_qkv``, ``linear_fc1``: rows split) keeps
``A`` whole and splits ``B`` and ``m`` by rows; a row-parallel base (``linear_proj``, ``linear_fc2``:
columns split) splits ``A`` by columns and keeps ``B`` and ``m`` whole. The adapter's output is then
sharded exactly like the base's, and every gradient is the one of the unsplit model.

An MoE expert's linear (``expert``: its global index) splits over the expert tensor-parallel group
(the base's ``tp_group``), and the token dispatcher does its communication: a column-parallel expert's
input grad and a row-parallel expert's output are summed over that group outside the linear. The
adapter then adds no collective to the activations; its whole factor (``A`` of a column, ``B`` of a
row) gets its gradient summed over the group instead, so every gradient is still the unsplit one.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
import torch.nn.functional as F

COLUMN, ROW = "column", "row"


def initial_lora_a(rank: int, in_features: int, seed: int, name: str) -> torch.Tensor:
    """``peft``'s default ``A`` (Kaiming-uniform, a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), drawn from a
    stream fixed by (seed, layer name): the same full tensor at every parallel layout."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    bound = 1.0 / math.sqrt(in_features)
    return (torch.rand(rank, in_features, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound).float()


class Adapter(torch.nn.Module):
    """The adapter's parameters: ``lora_A`` [r, in], ``lora_B`` [out, r], DoRA's ``magnitude`` [out]
    (local shards)."""

    def __init__(self, lora_a: torch.Tensor, out_features: int, magnitude: torch.Tensor | None):
        super().__init__()
        self.lora_A = torch.nn.Parameter(lora_a)
        self.lora_B = torch.nn.Parameter(torch.zeros(out_features, lora_a.shape[0], dtype=lora_a.dtype))
        self.magnitude = torch.nn.Parameter(magnitude) if magnitude is not None else None


class LoRALinear(torch.nn.Module):
    """A megatron-core ``ColumnParallelLinear`` / ``RowParallelLinear`` (``to_wrap``) plus an ``adapter``.

    Its forward returns what the base returns, ``(output, bias)``; its checkpoint keys are the base's
    (unchanged, so the base loads as before) plus ``<prefix>adapter.lora_A`` / ``lora_B`` / ``magnitude``.
    """

    def __init__(
        self,
        base: torch.nn.Module,
        *,
        mode: str,
        rank: int,
        alpha: float,
        dropout: float,
        dora: bool,
        gated: bool,
        name: str,
        seed: int,
        expert: int | None = None,
    ):
        super().__init__()
        self.to_wrap = base
        self.mode, self.gated, self.scale, self.name, self.expert = mode, gated, alpha / rank, name, expert
        self.group = getattr(base, "tp_group", None)  # the tensor- (or expert tensor-) parallel group it splits over
        self.tp: int = self.group.size() if self.group is not None else 1
        self.tp_rank: int = self.group.rank() if self.group is not None else 0
        self.explicit_comm = bool(getattr(base, "explicit_expert_comm", False))
        weight = base.weight
        out_local, in_local = weight.shape
        in_full = in_local * self.tp if mode == ROW else in_local
        lora_a = initial_lora_a(rank, in_full, seed, name)
        if mode == ROW:
            lora_a = lora_a.chunk(self.tp, dim=1)[self.tp_rank]
        lora_a = lora_a.to(weight.device, weight.dtype)
        magnitude = self._row_norm(weight.detach()).to(weight.dtype) if dora else None
        self.adapter = Adapter(lora_a.contiguous(), out_local, magnitude)
        self.adapter.to(weight.device)
        self.dropout = torch.nn.Dropout(dropout) if dropout > 0 else None
        self._mark_parallel()

    def _mark_parallel(self) -> None:
        from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

        # False: reduced over the expert data-parallel group (the replicas of this expert shard), as megatron
        # does for expert weights at EP > 1; also at ETP > 1, where the dense DP group would mix shards
        split_expert = self.expert is not None and self.explicit_comm
        allreduce = getattr(self.to_wrap.weight, "allreduce", True) and not split_expert
        for param in self.adapter.parameters():
            param.allreduce = allreduce
        if self.tp == 1:
            return
        split = {"lora_B": 0, "magnitude": 0} if self.mode == COLUMN else {"lora_A": 1}
        for name, dim in split.items():
            param = getattr(self.adapter, name)
            if param is not None:
                set_tensor_model_parallel_attributes(param, True, dim, 1)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("to_wrap")
            if base is None:
                raise
            return getattr(base, name)  # the base's settings (e.g. ``skip_bias_add``)

    # -- math -----------------------------------------------------------------------------------
    def _row_norm(self, merged: torch.Tensor) -> torch.Tensor:
        """||row||_2 of the full (unsplit) ``[out, in]`` matrix whose local shard is ``merged``."""
        squares = merged.float().pow(2).sum(dim=1)
        if self.mode == ROW and self.tp > 1:
            torch.distributed.all_reduce(squares, group=self.group)
        return squares.sqrt()

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, this rank's shard."""
        return self.scale * self.adapter.lora_B @ self.adapter.lora_A

    def _lora(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel.mappings import (
            copy_to_tensor_model_parallel_region,
            reduce_from_tensor_model_parallel_region,
        )

        a, b = self.adapter.lora_A, self.adapter.lora_B
        if self.explicit_comm and self.tp > 1:  # identity; backward sums the whole factor's gradient
            if self.mode == COLUMN:
                a = copy_to_tensor_model_parallel_region(a, group=self.group)
            else:
                b = copy_to_tensor_model_parallel_region(b, group=self.group)
            return F.linear(F.linear(x, a), b) * self.scale
        h = F.linear(x, a)
        if self.tp > 1 and self.mode == COLUMN:
            h = copy_to_tensor_model_parallel_region(h, group=self.group)  # identity; backward sums the ranks'
        elif self.tp > 1:
            h = reduce_from_tensor_model_parallel_region(h, group=self.group)  # the sum of the partial products
        return F.linear(h, b) * self.scale

    def _without_bias(self, output: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        own = getattr(self.to_wrap, "bias", None)
        if bias is None and own is not None and not getattr(self.to_wrap, "skip_bias_add", False):
            return output - own  # the base added its bias to the output
        return output

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        output, bias = self.to_wrap(x, *args, **kwargs)
        dropped = self.dropout(x) if self.dropout is not None else x
        lora = self._lora(dropped)
        if self.adapter.magnitude is None:
            return output + lora.to(output.dtype), bias
        weight = self.to_wrap.weight
        norm = self._row_norm((weight + self.delta_weight()).detach())
        ratio = (self.adapter.magnitude.float() / norm).to(output.dtype)
        if self.dropout is not None:  # as peft: the rescaled base term sees the dropped input too
            base_out, base_bias = self.to_wrap(dropped, *args, **kwargs)
            plain = self._without_bias(base_out, base_bias)
        else:
            plain = self._without_bias(output, bias)
        return output + (ratio - 1) * plain + ratio * lora.to(output.dtype), bias

    # -- checkpoints ----------------------------------------------------------------------------
    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None) -> dict:
        from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        state = self.to_wrap.sharded_state_dict(prefix, sharded_offsets, metadata)
        local = {k: v for k, v in self.adapter.state_dict(prefix="", keep_vars=True).items()}
        axes = {"lora_B": 0, "magnitude": 0} if self.mode == COLUMN else {"lora_A": 1}
        groups = {}
        dp_cp_group = (metadata or {}).get("dp_cp_group")
        if dp_cp_group is not None:  # as the base: its own (expert) TP group
            groups = {"tp_group": self.group, "dp_cp_group": dp_cp_group}
        adapter = make_sharded_tensors_for_checkpoint(local, f"{prefix}adapter.", axes, sharded_offsets, **groups)
        if self.gated:  # [gate; up] rows per rank, stored as the base's fc1: TP-independent
            for key in (f"{prefix}adapter.lora_B", f"{prefix}adapter.magnitude"):
                if key in adapter:
                    adapter[key] = apply_swiglu_sharded_factory(adapter[key], sharded_offsets)
        state.update(adapter)
        return state
