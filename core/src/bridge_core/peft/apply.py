"""Put adapters on a megatron-core model: freeze every base parameter, wrap the target linears.

Runs on each model chunk before DDP wraps it (the gradient buffers and optimizer then hold the
adapters only). Expert linears of MoE layers are not targets.
"""

from __future__ import annotations

from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.peft.lora import COLUMN, ROW, LoRALinear

ADAPTER_KEY = ".adapter."
_PLACES = {  # target -> (owner attribute, expected parallel mode)
    "linear_qkv": ("self_attention", COLUMN),
    "linear_proj": ("self_attention", ROW),
    "linear_fc1": ("mlp", COLUMN),
    "linear_fc2": ("mlp", ROW),
    "linear_q_proj": ("self_attention", COLUMN),
    "linear_q_up_proj": ("self_attention", COLUMN),
    "linear_kv_up_proj": ("self_attention", COLUMN),
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


def apply_peft(chunks: list, peft: Any, seed: int) -> list:
    """Freeze ``chunks`` and wrap ``peft.targets`` (a ``PeftConfig``) in every layer; returns ``chunks``."""
    wrapped = 0
    for chunk in chunks:
        for param in chunk.parameters():
            param.requires_grad_(False)
        for layer in _layers(chunk):
            for target in peft.targets:
                owner_name, expected = _PLACES[target]
                owner = getattr(layer, owner_name, None)
                base = getattr(owner, target, None) if owner is not None else None
                if base is None:  # e.g. linear_fc1 of a MoE layer: its experts are not targets
                    continue
                where = f"layer {layer.layer_number} {owner_name}.{target}"
                mode = _mode(base, where)
                if mode != expected:
                    raise ConfigError(f"peft.targets: {where} is {mode}-parallel; expected {expected}-parallel")
                gated = target == "linear_fc1" and bool(layer.config.gated_linear_unit)
                setattr(
                    owner,
                    target,
                    LoRALinear(
                        base,
                        mode=mode,
                        rank=peft.rank,
                        alpha=peft.alpha,
                        dropout=peft.dropout,
                        dora=peft.scheme == "dora",
                        gated=gated,
                        name=adapter_name(layer.layer_number - 1, target),
                        seed=seed,
                    ),
                )
                wrapped += 1
    if chunks and wrapped == 0 and any(_layers(c) for c in chunks):
        raise ConfigError(f"peft.targets={','.join(peft.targets)}: no such linear in the model's layers")
    return chunks


def adapter_name(layer: int, target: str) -> str:
    """``layers.<global layer>.<owner>.<target>``: names an adapter at every parallel layout."""
    return f"layers.{layer}.{_PLACES[target][0]}.{target}"


def lora_modules(chunks: list) -> list[tuple[int, str, LoRALinear]]:
    """``(global layer, target, module)`` of every adapter in ``chunks``."""
    out = []
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, LoRALinear):
                _, layer, _, target = module.name.split(".")
                out.append((int(layer), target, module))
    return out


def adapter_state(state: dict) -> dict:
    """The adapter entries of a (sharded) model state dict: the keys a PEFT checkpoint holds."""
    return {k: v for k, v in state.items() if ADAPTER_KEY in k}


def is_adapter_key(key: str) -> bool:
    return ADAPTER_KEY in key


