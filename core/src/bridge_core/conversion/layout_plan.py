"""What each rank of a parallel layout would hold and read, planned from the config alone (no weights).

The model is built once on the ``meta`` device at one rank (no memory, any size), every parameter is
matched to its mapping (``build_tasks``: the same coverage checks as a conversion), and each
(tensor, pipeline, expert) rank's share is derived from megatron-core's own rules: tensor parallel
splits a parameter on its ``partition_dim`` (the vocabulary padded to a multiple of 128 x TP),
pipeline stages take consecutive equal runs of layers (the embedding on the first, the output layer
and final norm on the last), expert parallel rank ``r`` of ``E`` holds experts ``r*E/EP ...``, expert
tensor parallel splits the experts' linears. ``bridgectl plan`` prints it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.runtime.parallelism import Parallelism

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")


@dataclass(frozen=True)
class PlannedParam:
    """One Megatron parameter of the whole model: its global name and shape, how it splits, what it reads."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    tp_dim: int | None
    layer: int | None
    expert: int | None
    hf_names: tuple[str, ...]
    mapping: str

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _itemsize(self.dtype)


@dataclass
class RankShare:
    """What one (tensor, pipeline, expert) rank holds: parameter count and bytes, and the HF tensors it reads."""

    tp_rank: int
    pp_rank: int
    ep_rank: int
    params: int = 0
    nbytes: int = 0
    hf_names: set[str] = field(default_factory=set)
    read_bytes: int = 0  # what it reads from the HF files: its rows of row-split tensors, the rest whole
    largest: int = 0  # bytes of its largest parameter (a loader's staging buffer)


@dataclass
class LayoutPlan:
    architecture: str
    parallel: Parallelism
    params: list[PlannedParam]
    shares: list[RankShare]

    @property
    def total_params(self) -> int:
        return sum(_numel(p.shape) for p in self.params)

    def busiest(self) -> RankShare:
        return max(self.shares, key=lambda s: s.nbytes)

    def to_dict(self) -> dict[str, Any]:
        p = self.parallel
        return {
            "architecture": self.architecture,
            "parallel": {"tp": p.tp, "pp": p.pp, "ep": p.ep, "etp": p.etp or p.tp},
            "total_params": self.total_params,
            "ranks": [
                {
                    "tp_rank": s.tp_rank,
                    "pp_rank": s.pp_rank,
                    "ep_rank": s.ep_rank,
                    "params": s.params,
                    "bytes": s.nbytes,
                    "read_bytes": s.read_bytes,
                    "largest_param_bytes": s.largest,
                    "hf_tensors": len(s.hf_names),
                }
                for s in self.shares
            ],
        }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def meta_model(provider: Any) -> tuple[Any, list[Any]]:
    """``provider``'s whole model built on the ``meta`` device (no memory, any size, no initialisation) in a
    private one-rank group, and its parameters (``collect_params`` at TP=PP=1)."""
    with meta_session(provider) as built:
        return built


@contextlib.contextmanager
def meta_session(provider: Any) -> Iterator[tuple[Any, list[Any]]]:
    """``meta_model`` with megatron-core's parallel state kept while inside (TP=PP=1: data parallel over
    the world, so every rank of a launched world builds the same whole model), e.g. for its sharded
    state dict."""
    from bridge_core.conversion.params import collect_params
    from bridge_core.runtime.cpu_support import cuda_on_cpu
    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_model_parallel

    provider.perform_initialization = False
    provider.use_cpu_initialization = True
    with cuda_on_cpu():
        ensure_model_parallel(Parallelism())
        try:
            provider.finalize()
            with torch.device("meta"):
                model = provider.provide()
            yield model, collect_params([model], 1, 1, 0)
        finally:
            destroy_model_parallel()


def _meta_params(bridge: Any, provider: Any) -> list[PlannedParam]:
    from bridge_core.conversion import plan

    model, params = meta_model(provider)
    tied = bool(getattr(model, "share_embeddings_and_output_weights", False))
    bridge.bridge.select_hf_layout(provider, None)
    tasks = plan.build_tasks(params, bridge.bridge.mapping_registry(), tied=tied, owner=bridge.owner)
    by_name = {t.param.global_name: t for t in tasks}
    out = []
    for p in params:
        task = by_name.get(p.global_name)
        layer = _LAYER.match(p.global_name)
        expert = _EXPERT.search(p.global_name)
        out.append(
            PlannedParam(
                name=p.global_name,
                shape=p.full_shape,
                dtype=p.dtype,
                tp_dim=p.tp_dim,
                layer=int(layer.group(1)) if layer else None,
                expert=int(expert.group(1)) if expert and p.is_expert else None,
                hf_names=tuple(task.mapping.hf_names) if task is not None else (),
                mapping=type(task.mapping).__name__ if task is not None else "tied",
            )
        )
    return out


def _stage_of(param: PlannedParam, layers_per_stage: int, pp: int) -> int:
    if param.layer is not None:
        return param.layer // layers_per_stage
    if param.name.startswith("embedding."):
        return 0
    return pp - 1  # output layer, final norm, MTP


def _local_shape(param: PlannedParam, tp: int, etp: int, vocab_rows: int | None) -> tuple[int, ...]:
    shape = list(param.shape)
    if vocab_rows is not None and param.mapping.startswith("Vocab"):
        shape[0] = vocab_rows
    size = etp if param.expert is not None else tp
    if param.tp_dim is not None and size > 1:
        if shape[param.tp_dim] % size:
            dim = shape[param.tp_dim]
            raise ConfigError(f"{param.name}: dimension {param.tp_dim} ({dim}) does not split {size} ways")
        shape[param.tp_dim] //= size
    return tuple(shape)


def _read_bytes(param: PlannedParam, local_bytes: int, tp_rank: int) -> int:
    """As the loader reads: its own rows of a dim-0 split, a whole replicated tensor; a dim-1 split's
    tensor is read whole by tensor-parallel rank 0 and scattered."""
    if param.tp_dim == 1:
        return param.nbytes if tp_rank == 0 else 0
    return local_bytes


def plan_layout(bridge: Any, parallel: Parallelism, dtype: torch.dtype | None = None) -> LayoutPlan:
    """The plan of ``bridge``'s model (an ``AutoBridge``) at ``parallel``; no weight is read.

    Runs in one process (a private one-rank group while the meta model is built).
    """
    provider = bridge.to_megatron_provider()
    if dtype is not None:
        provider.params_dtype = dtype
    padded = parallel.apply(bridge.to_megatron_provider()).vocab_size_with_padding
    params = _meta_params(bridge, provider)
    layers, pp, ep = provider.num_layers, parallel.pp, parallel.ep
    if layers % pp:
        raise ConfigError(f"--pp {pp} does not divide the model's {layers} layers")
    experts = provider.num_moe_experts or 0
    if experts % ep:
        raise ConfigError(f"--ep {ep} does not divide the model's {experts} experts")
    etp = parallel.etp or parallel.tp
    shares = [RankShare(t, s, e) for s in range(pp) for e in range(ep) for t in range(parallel.tp)]
    for param in params:
        stage = _stage_of(param, layers // pp, pp)
        local = _local_shape(param, parallel.tp, etp, padded)
        nbytes = _numel(local) * _itemsize(param.dtype)
        for share in shares:
            if share.pp_rank != stage:
                continue
            if param.expert is not None and param.expert // (experts // ep) != share.ep_rank:
                continue
            share.params += _numel(local)
            share.nbytes += nbytes
            share.largest = max(share.largest, nbytes)
            share.hf_names.update(param.hf_names)
            share.read_bytes += _read_bytes(param, nbytes, share.tp_rank)
    return LayoutPlan(bridge.hf.architecture, parallel, params, shares)
