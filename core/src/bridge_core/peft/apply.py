"""Put adapters on a megatron-core model: freeze every base parameter, wrap the target linears.

Runs on each model chunk before DDP wraps it (the gradient buffers and optimizer then hold the
adapters only). MoE experts are targets only when asked (``experts.linear_fc1``, ``experts.linear_fc2``:
every local expert of a ``SequentialMLP``, named by its global index ``ep_rank * local + i``), LoRA only.
"""

from __future__ import annotations

from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.peft.lora import COLUMN, ROW, LoRALinear
from bridge_core.training.config import EXPERT_TARGETS, check_expert_targets

ADAPTER_KEY = ".adapter."
_PLACES = {  # target -> (owner attribute, expected parallel mode)
    "linear_qkv": ("self_attention", COLUMN),
    "linear_proj": ("self_attention", ROW),
    "linear_fc1": ("mlp", COLUMN),
    "linear_fc2": ("mlp", ROW),
    "linear_q_proj": ("self_attention", COLUMN),
    "linear_q_up_proj": ("self_attention", COLUMN),
    "linear_kv_up_proj": ("self_attention", COLUMN),
    "experts.linear_fc1": ("mlp.experts", COLUMN),
    "experts.linear_fc2": ("mlp.experts", ROW),
}


def _layers(chunk: torch.nn.Module) -> list[Any]:
    from megatron.core.transformer.transformer_layer import TransformerLayer

    return [m for m in chunk.modules() if isinstance(m, TransformerLayer)]


def _mode(module: torch.nn.Module, where: str) -> str:
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    if isinstance(module, ColumnParallelLinear):
        if module.gather_output:
            raise ConfigError(f"peft.targets: {where} gathers its output; adapters need a split output")
        return COLUMN
    if isinstance(module, RowParallelLinear):
        return ROW
    raise ConfigError(f"peft.targets: {where} is a {type(module).__name__}, not a megatron-core parallel linear")


def _places(layer: Any, target: str) -> list[tuple[Any, str, str, int | None]]:
    """``(owner module, attribute, where, global expert or None)`` of ``target`` in ``layer`` (none: absent)."""
    owner_name, _ = _PLACES[target]
    attr = target.rsplit(".", 1)[-1]
    if target not in EXPERT_TARGETS:
        owner = getattr(layer, owner_name, None)
        if owner is None or getattr(owner, attr, None) is None:  # e.g. linear_fc1 of a MoE layer
            return []
        return [(owner, attr, f"layer {layer.layer_number} {owner_name}.{attr}", None)]
    from megatron.core.transformer.moe.experts import SequentialMLP

    experts = getattr(getattr(layer, "mlp", None), "experts", None)
    if experts is None:  # a dense layer
        return []
    if not isinstance(experts, SequentialMLP):
        raise ConfigError(
            f"peft.targets={target}: layer {layer.layer_number}'s experts are a {type(experts).__name__}; "
            "expert adapters need SequentialMLP (moe_grouped_gemm=false)"
        )
    first = experts.ep_group.rank() * experts.num_local_experts if experts.ep_group is not None else 0
    return [
        (mlp, attr, f"layer {layer.layer_number} expert {first + i} {attr}", first + i)
        for i, mlp in enumerate(experts.local_experts)
    ]


def apply_peft(chunks: list, peft: Any, seed: int) -> list:
    """Freeze ``chunks`` and wrap ``peft.targets`` (a ``PeftConfig``) in every layer; returns ``chunks``."""
    check_expert_targets(peft)
    if chunks and any(t in EXPERT_TARGETS for t in peft.targets) and not chunks[0].config.num_moe_experts:
        raise ConfigError(f"peft.targets={','.join(peft.targets)}: the model has no MoE experts")
    wrapped = 0
    for chunk in chunks:
        for param in chunk.parameters():
            param.requires_grad_(False)
        for layer in _layers(chunk):
            for target in peft.targets:
                expected = _PLACES[target][1]
                for owner, attr, where, expert in _places(layer, target):
                    base = getattr(owner, attr)
                    mode = _mode(base, where)
                    if mode != expected:
                        raise ConfigError(f"peft.targets: {where} is {mode}-parallel; expected {expected}-parallel")
                    gated = attr == "linear_fc1" and bool(layer.config.gated_linear_unit)
                    lora = LoRALinear(
                        base,
                        mode=mode,
                        rank=peft.rank,
                        alpha=peft.alpha,
                        dropout=peft.dropout,
                        dora=peft.scheme == "dora",
                        gated=gated,
                        name=adapter_name(layer.layer_number - 1, target, expert),
                        seed=seed,
                        expert=expert,
                    )
                    setattr(owner, attr, lora)
                    wrapped += 1
    if chunks and wrapped == 0 and any(_layers(c) for c in chunks):
        raise ConfigError(f"peft.targets={','.join(peft.targets)}: no such linear in the model's layers")
    return chunks


def adapter_name(layer: int, target: str, expert: int | None = None) -> str:
    """``layers.<global layer>.<owner>.<target>`` (an expert's: ``layers.<L>.mlp.experts.<global expert>.<linear>``):
    names an adapter at every parallel layout."""
    if expert is not None:
        return f"layers.{layer}.mlp.experts.{expert}.{target.rsplit('.', 1)[-1]}"
    return f"layers.{layer}.{_PLACES[target][0]}.{target}"


def lora_modules(chunks: list) -> list[tuple[int, str, LoRALinear]]:
    """``(global layer, target, module)`` of every adapter in ``chunks`` (an expert's: ``module.expert``)."""
    out = []
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, LoRALinear):
                parts = module.name.split(".")
                target = parts[-1] if module.expert is None else f"experts.{parts[-1]}"
                out.append((int(parts[1]), target, module))
    return out


def adapter_state(state: dict) -> dict:
    """The adapter entries of a (sharded) model state dict: the keys a PEFT checkpoint holds."""
    return {k: v for k, v in state.items() if ADAPTER_KEY in k}


def is_adapter_key(key: str) -> bool:
    return ADAPTER_KEY in key
