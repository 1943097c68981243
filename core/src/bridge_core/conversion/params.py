"""This rank's Megatron parameters, named with global layer and expert numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from bridge_core.runtime.chunks import unwrap

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_LOCAL_EXPERT = re.compile(r"\.experts\.local_experts\.(\d+)\.")
_GROUPED_EXPERT = re.compile(r"(\.experts\.linear_fc[12]\.(?:weight|bias))(\d+)$")


@dataclass(frozen=True)
class ParamInfo:
    """One local parameter: its names, full (unsharded) shape and how tensor parallel splits it."""

    local_name: str
    global_name: str
    chunk: int
    shape: tuple[int, ...]
    full_shape: tuple[int, ...]
    dtype: torch.dtype
    tp_dim: int | None
    tp_size: int
    is_expert: bool
    tensor: torch.Tensor = field(repr=False, compare=False, hash=False)


def _layer_offsets(chunk: torch.nn.Module) -> dict[int, int]:
    """Local layer index -> global layer index, from each layer's 1-based ``layer_number``."""
    out = {}
    for name, module in chunk.named_modules():
        m = re.fullmatch(r"decoder\.layers\.(\d+)", name)
        if m and hasattr(module, "layer_number"):
            out[int(m.group(1))] = int(module.layer_number) - 1
    return out


def split_dims(chunk: torch.nn.Module) -> dict[int, int | None]:
    """``id(param)`` -> the dimension tensor parallel splits it on (None: replicated).

    Read from megatron-core's ``tensor_model_parallel``/``partition_dim`` attributes where present
    (they are set only when parameters are initialised), else from the owning module's class:
    column-parallel layers and vocabulary embeddings split weights and biases on dim 0, row-parallel
    layers split weights on dim 1; their biases, fused layer norms and everything else are replicated.
    """
    dims: dict[int, int | None] = {}
    for module in chunk.modules():
        cls = type(module).__name__
        for name, param in module.named_parameters(recurse=False):
            if getattr(param, "tensor_model_parallel", False):
                dims[id(param)] = int(param.partition_dim)
            elif name.startswith("layer_norm"):
                dims[id(param)] = None
            elif "VocabParallelEmbedding" in cls or "ColumnParallel" in cls:
                dims[id(param)] = 0 if name.startswith(("weight", "bias")) else None
            elif "RowParallel" in cls:
                dims[id(param)] = 1 if name.startswith("weight") else None
            else:
                dims[id(param)] = None
    return dims


def global_name(local: str, layers: dict[int, int], expert_offset: int) -> str:
    """Rename a local parameter with its global layer and expert numbers."""
    m = _LAYER.match(local)
    if m:
        local = f"decoder.layers.{layers.get(int(m.group(1)), int(m.group(1)))}." + local[m.end() :]
    local = _LOCAL_EXPERT.sub(lambda e: f".experts.local_experts.{int(e.group(1)) + expert_offset}.", local)
    return _GROUPED_EXPERT.sub(lambda e: f"{e.group(1)}{int(e.group(2)) + expert_offset}", local)


def is_expert_param(name: str) -> bool:
    """Routed-expert parameters (split by expert parallelism); shared experts are dense."""
    return ".mlp.experts." in f".{name}"


def collect_params(chunks: list[torch.nn.Module], tp_size: int, etp_size: int, ep_rank: int) -> list[ParamInfo]:
    """Every parameter of this rank's model chunks, with global names and full shapes."""
    infos = []
    for index, wrapped in enumerate(chunks):
        chunk = unwrap(wrapped)
        config = chunk.config
        local_experts = (config.num_moe_experts or 0) // max(config.expert_model_parallel_size, 1)
        layers = _layer_offsets(chunk)
        dims = split_dims(chunk)
        for name, param in chunk.named_parameters():
            expert = is_expert_param(name)
            size = etp_size if expert else tp_size
            tp_dim = dims[id(param)]
            full = list(param.shape)
            if tp_dim is not None:
                full[tp_dim] *= size
            infos.append(
                ParamInfo(
                    local_name=name,
                    global_name=global_name(name, layers, ep_rank * local_experts if expert else 0),
                    chunk=index,
                    shape=tuple(param.shape),
                    full_shape=tuple(full),
                    dtype=param.dtype,
                    tp_dim=tp_dim,
                    tp_size=size,
                    is_expert=expert,
                    tensor=param,
                )
            )
    return infos
