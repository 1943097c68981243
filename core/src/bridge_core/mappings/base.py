"""The mapping contract: name patterns with ``*`` wildcards, format transforms and sharding rules."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

Tensor: TypeAlias = torch.Tensor
HFParam: TypeAlias = str | dict[str, str]
# (HF name, first HF row, first row of the full Megatron tensor, number of rows)
RowPiece = tuple[str, int, int, int]


@dataclass(frozen=True)
class MappingContext:
    """What a format transform may need besides the tensors themselves.

    ``config`` is the model's megatron-core ``TransformerConfig`` (the provider); ``hf_config`` the HF
    config; ``megatron_shape`` the full, unsharded shape of the Megatron parameter (padded vocabulary
    included); ``index`` the value of a wildcard the HF side does not name (the expert of a stacked
    expert tensor), else ``None``.
    """

    config: Any
    hf_config: Any
    megatron_shape: tuple[int, ...]
    index: int | None = None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``decoder.layers.*.mlp`` -> a regex where each ``*`` captures a non-negative integer."""
    return re.compile("^" + r"(\d+)".join(re.escape(p) for p in pattern.split("*")) + "$")


def fill_pattern(pattern: str, values: tuple[str, ...]) -> str:
    """Substitute ``values`` for the ``*`` of ``pattern``, left to right."""
    parts = pattern.split("*")
    if len(parts) - 1 != len(values):
        raise ValueError(f"pattern {pattern!r} has {len(parts) - 1} wildcards, got {len(values)} values")
    out = parts[0]
    for value, part in zip(values, parts[1:]):
        out += str(value) + part
    return out


class MegatronParamMapping:
    """One Megatron parameter <-> one HF tensor (``hf_param`` a str) or several (a dict role -> name).

    Subclasses define the format (``hf_to_megatron``/``megatron_to_hf``, full tensors) and the tensor
    parallel sharding (``split``/``merge``; ``tp_dim`` None means replicated). Names may hold ``*``
    wildcards matching integers (layer, expert); the HF side uses the same wildcards in the same order,
    and may omit trailing ones (then the value reaches the transform as ``ctx.index``).
    """

    tp_dim: int | None = None
    # The dtype the HF tensor is exported in whatever the export's dtype (None: the export's): for
    # tensors an HF model keeps in fp32 inside a bf16 checkpoint (routers, expert biases).
    hf_dtype: torch.dtype | None = None

    def __init__(self, megatron_param: str, hf_param: HFParam):
        self.megatron_param = megatron_param
        self.hf_param = hf_param
        self._regex = compile_pattern(megatron_param)
        self.index: int | None = None

    # -- names ----------------------------------------------------------------------------------
    @property
    def hf_names(self) -> tuple[str, ...]:
        """Every HF name (or pattern) this mapping reads, in a stable order."""
        return (self.hf_param,) if isinstance(self.hf_param, str) else tuple(self.hf_param.values())

    def renamed(
        self, megatron_param: str | None = None, hf_name: Callable[[str], str] | None = None
    ) -> MegatronParamMapping:
        """A copy under another Megatron name pattern and/or with each HF name rewritten by ``hf_name``."""
        out = copy.copy(self)
        if megatron_param is not None:
            out.megatron_param, out._regex = megatron_param, compile_pattern(megatron_param)
        if hf_name is not None:
            hf = self.hf_param
            out.hf_param = hf_name(hf) if isinstance(hf, str) else {k: hf_name(v) for k, v in hf.items()}
        return out

    def match(self, megatron_name: str) -> MegatronParamMapping | None:
        """A copy bound to ``megatron_name`` with HF names filled in, or None if it does not match."""
        m = self._regex.match(megatron_name)
        if m is None:
            return None
        values = m.groups()
        n_hf = self.hf_names[0].count("*")
        bound = copy.copy(self)
        bound.megatron_param = megatron_name
        if isinstance(self.hf_param, str):
            bound.hf_param = fill_pattern(self.hf_param, values[:n_hf])
        else:
            bound.hf_param = {k: fill_pattern(v, values[:n_hf]) for k, v in self.hf_param.items()}
        bound.index = int(values[n_hf]) if len(values) > n_hf else None
        return bound

    def hf_weights_arg(self, tensors: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        """Shape the HF tensors read for this mapping as its transform expects them."""
        if isinstance(self.hf_param, str):
            return tensors[self.hf_param]
        return {role: tensors[name] for role, name in self.hf_param.items()}

    # -- format (pure) --------------------------------------------------------------------------
    def hf_to_megatron(self, hf_weights: Tensor | dict[str, Tensor], ctx: MappingContext) -> Tensor:
        """HF tensor(s) -> the full Megatron tensor. Default: the tensor itself."""
        return hf_weights

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        """The full Megatron tensor -> ``{hf_name: tensor}``. Default: the tensor itself."""
        if not isinstance(self.hf_param, str):
            raise TypeError(f"{type(self).__name__} reads several HF tensors: it must define megatron_to_hf")
        return {self.hf_param: weight}

    # -- row placement (optional; lets the loader read file rows straight into the parameter) ---
    def hf_row_layout(self, hf_rows: dict[str, int], ctx: MappingContext) -> list[RowPiece] | None:
        """Where ``hf_to_megatron`` puts each HF tensor's rows (dim 0) in the full Megatron tensor.

        ``hf_rows`` maps each HF name to its row count. Return None when the transform does more
        than place whole rows; rows no piece covers are zeros. Used only when the class defining it
        also defines (or inherits from the class defining) ``hf_to_megatron``. Default: the identity.
        """
        if not isinstance(self.hf_param, str):
            return None
        return [(self.hf_param, 0, 0, hf_rows[self.hf_param])]

    def shard_rows(self, full_rows: int, n: int, index: int) -> list[tuple[int, int]] | None:
        """``(first row, count)`` ranges of the full tensor that ``split(full, n)[index]`` holds, in
        order; None when ``split`` does not cut whole rows. Default: as the default ``split``."""
        if self.tp_dim is None or n == 1:
            return [(0, full_rows)]
        if self.tp_dim != 0:
            return None
        size = -(-full_rows // n)
        first = min(index * size, full_rows)
        return [(first, min(size, full_rows - first))]

    # -- sharding (pure) ------------------------------------------------------------------------
    def split(self, full: Tensor, n: int) -> list[Tensor]:
        """The full tensor -> ``n`` tensor-parallel shards (rank order)."""
        if self.tp_dim is None or n == 1:
            return [full] * n
        return list(torch.chunk(full, n, dim=self.tp_dim))

    def merge(self, shards: list[Tensor]) -> Tensor:
        """Tensor-parallel shards -> the full tensor (inverse of ``split``)."""
        if self.tp_dim is None or len(shards) == 1:
            return shards[0]
        return torch.cat(shards, dim=self.tp_dim)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.megatron_param!r} <-> {self.hf_param!r})"
