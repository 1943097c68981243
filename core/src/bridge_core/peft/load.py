"""``AutoBridge.load_hf_adapter``: an HF PEFT adapter folder into a Megatron model (any TP), exactly.

The adapter's projections are fused the way the bridge fuses their weights (``q/k/v_proj`` ->
``linear_qkv``, ``gate/up_proj`` -> ``linear_fc1``): their ``B`` rows are merged by the bridge's
mapping. Projections that share one ``A`` (``bridgectl peft export``'s output) keep rank r; ``peft``'s
own adapters (an ``A`` per projection, often only ``q_proj`` and ``v_proj``) become rank ``k * r``
adapters with ``A`` stacked and ``B`` block-diagonal: the same function, exactly. MoE expert adapters
(``target_parameters`` on transformers' fused expert tensors) go to every expert's linears
(``bridge_core.peft.experts``). Settings the Megatron adapters cannot reproduce are refused, naming the
``adapter_config.json`` field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.peft import experts, hf_adapter
from bridge_core.peft.apply import apply_peft, lora_modules
from bridge_core.training.config import EXPERT_TARGETS, MLA_TARGETS, PEFT_TARGETS, PeftConfig

_MUST_BE = {  # field -> the values we can reproduce
    "use_rslora": (False, None),
    "fan_in_fan_out": (False, None),
    "bias": ("none", None),
    "lora_bias": (False, None),
    "modules_to_save": (None,),
    "layers_to_transform": (None,),
    "layers_pattern": (None,),
    "layer_replication": (None,),
    "trainable_token_indices": (None,),
}


def _placeable(registry: Any, num_layers: int) -> dict[str, tuple[int, str]]:
    """Every HF module an adapter can sit on (``model.layers.0.self_attn.q_proj``) -> (layer, Megatron target)."""
    out = {}
    for layer in range(num_layers):
        for target in PEFT_TARGETS + MLA_TARGETS:
            mapping = registry.megatron_to_hf_lookup(hf_adapter.megatron_weight_name(layer, target))
            if mapping is not None:
                for module in hf_adapter._modules(mapping).values():
                    out[module] = (layer, target)
    return out


def _matches(spec: str | list[str], module: str) -> bool:
    """``peft``'s rule: a string full-matches as a regex; a list entry is the name or its dotted suffix."""
    if isinstance(spec, str):
        return re.fullmatch(spec, module) is not None
    return any(module == entry or module.endswith("." + entry) for entry in spec)


def _expert_targets(spec: Any, registry: Any, num_layers: int, hf_config: Any, where: str) -> set[str]:
    """The expert targets ``target_parameters`` names (every entry must match a fused expert tensor)."""
    if not spec:
        return set()
    if not isinstance(spec, list) or hf_config is None:
        raise ConfigError(f"{where}: target_parameters={spec!r}; a list of transformers' expert tensors is supported")
    params = experts.transformers_params(hf_config)
    places = {}
    for layer in range(num_layers):
        for target in EXPERT_TARGETS:
            if registry.megatron_to_hf_lookup(experts.weight_name(layer, target, 0)) is not None:
                module, param = experts.hf_param(registry, layer, target, params)
                places[f"{module}.{param}"] = target
    ours: dict[str, list[str]] = {}
    for name in places:
        module, param = name.rsplit(".", 1)
        ours.setdefault(module, []).append(param)
    for entry in spec:
        if not experts.targeted([entry], ours):
            raise ConfigError(f"{where}: target_parameters {entry!r} is no MoE expert tensor the Megatron model has")
    return {places[n] for n in experts.targeted(spec, params) if n in places}


def read_adapter_config(folder: Path, registry: Any, num_layers: int, hf_config: Any = None) -> PeftConfig:
    """The ``PeftConfig`` an HF adapter folder describes; a one-line error for what cannot be placed
    (``hf_config``: transformers' config, for ``target_parameters``)."""
    file = folder / hf_adapter.ADAPTER_CONFIG
    if not file.is_file():
        raise ConfigError(f"{file}: missing; not an HF PEFT adapter folder")
    config = json.loads(file.read_text())
    where = f"{file}"
    if config.get("peft_type") != "LORA":
        raise ConfigError(f"{where}: peft_type={config.get('peft_type')!r}; only LORA (with use_dora) is supported")
    for key, allowed in _MUST_BE.items():
        if config.get(key, allowed[0]) not in allowed and config.get(key) not in ({}, []):
            raise ConfigError(f"{where}: {key}={config.get(key)!r} is not supported (expected {allowed[0]!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise ConfigError(f"{where}: {key} is not supported (one rank and alpha for every module)")
    spec = config.get("target_modules")
    expert_targets = _expert_targets(config.get("target_parameters"), registry, num_layers, hf_config, where)
    if expert_targets and spec in (None, [], ""):
        spec = []
    elif not spec or not isinstance(spec, (str, list)):
        raise ConfigError(f"{where}: target_modules={spec!r}; a list of module names or a regex is supported")
    placeable = _placeable(registry, num_layers)
    entries = [spec] if isinstance(spec, str) else spec
    for entry in entries:
        if not any(_matches(entry if isinstance(spec, str) else [entry], m) for m in placeable):
            raise ConfigError(
                f"{where}: target_modules {entry!r} cannot be placed on the Megatron model (placeable: "
                f"{', '.join(sorted({m.rsplit('.', 1)[-1] for m in placeable}))})"
            )
    targets = {target for module, (_, target) in placeable.items() if _matches(spec, module)} | expert_targets
    return PeftConfig(
        scheme="dora" if config.get("use_dora") else "lora",
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout") or 0.0),
        targets=[t for t in PEFT_TARGETS + MLA_TARGETS + EXPERT_TARGETS if t in targets],
    )


def load_hf_adapter(bridge: Any, model: Any, folder: str | os.PathLike[str], seed: int = 0) -> PeftConfig:
    """Put the adapter of ``folder`` on this rank's ``model`` chunks (every rank calls it); returns its config.

    A model without adapters gets them first (``apply_peft``: the base is frozen), one that has
    them must have the same rank and targets.
    """
    from safetensors.torch import load_file

    from bridge_core.runtime.chunks import unwrap_chunks

    folder = Path(folder)
    chunks = unwrap_chunks(model)
    config = chunks[0].config
    bridge.bridge.select_hf_layout(config, None)
    registry = bridge.bridge.mapping_registry()
    peft = read_adapter_config(folder, registry, config.num_layers, bridge.hf.config)
    weights = folder / hf_adapter.ADAPTER_WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{weights}: missing")
    tensors = load_file(str(weights))
    blocks = hf_adapter.blocks_needed(tensors, registry, config.num_layers, str(weights))
    if blocks > 1:  # the same function at rank blocks * r: alpha scales with it, so alpha / r stays
        peft = dataclasses.replace(peft, rank=blocks * peft.rank, alpha=blocks * peft.alpha)
    present = lora_modules(chunks)
    if not present:
        apply_peft(chunks, peft, seed)
        present = lora_modules(chunks)
    used: set[str] = set()
    fused = _expert_adapters(tensors, present, registry, config, bridge.hf.config, folder, str(weights))
    for layer, target, module in present:
        if target in EXPERT_TARGETS:
            full, names = fused[(layer, target)]
            used.update(names)
            full = _pad_rank(full, module.adapter.lora_A.shape[0])
            _fill(
                module,
                {k: v[module.expert] for k, v in full.items()},
                weights,
                layer,
                f"expert {module.expert} {target}",
            )
            continue
        rows = module.to_wrap.weight.shape[0] * (module.tp if module.mode == "column" else 1)
        full = hf_adapter.from_hf(
            tensors, layer, target, registry, config, bridge.hf.config, str(weights), blocks, rows
        )
        if full is None:
            raise ConfigError(f"{weights}: no adapter for layer {layer}'s {target}, which the model has")
        used.update(k for k in tensors if _belongs(k, layer, target, registry))
        _fill(module, full, weights, layer, target)
    unused = sorted(set(tensors) - used)
    if unused:
        raise ConfigError(f"{weights}: {unused[0]} has no place in the Megatron model ({len(unused)} tensors unused)")
    return peft


def _expert_adapters(
    tensors: dict, present: list, registry: Any, config: Any, hf_config: Any, folder: Path, where: str
) -> dict:
    """(layer, expert target) -> (its full Megatron adapter over the experts, the PEFT keys read)."""
    wanted = sorted({(layer, target) for layer, target, _ in present if target in EXPERT_TARGETS})
    if not wanted:
        return {}
    spec = json.loads((folder / hf_adapter.ADAPTER_CONFIG).read_text()).get("target_parameters")
    params = experts.transformers_params(hf_config)
    chosen = experts.targeted(spec, params)
    out = {}
    for layer, target in wanted:
        found = experts.from_hf(tensors, layer, target, registry, config, hf_config, params, chosen, where)
        if found is None:
            raise ConfigError(f"{where}: no adapter for layer {layer}'s {target}, which the model has")
        out[(layer, target)] = found
    return out


def _pad_rank(full: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """An expert adapter at a larger rank (``blocks_needed`` > 1 for the dense ones): zero rows of ``A``
    and zero columns of ``B`` added, the same function."""
    a, b = full["lora_A"], full["lora_B"]
    if a.shape[1] >= rank:
        return full
    pad_a = torch.zeros(a.shape[0], rank - a.shape[1], a.shape[2], dtype=a.dtype)
    pad_b = torch.zeros(b.shape[0], b.shape[1], rank - b.shape[2], dtype=b.dtype)
    return {"lora_A": torch.cat([a, pad_a], dim=1), "lora_B": torch.cat([b, pad_b], dim=2)}


def _belongs(key: str, layer: int, target: str, registry: Any) -> bool:
    mapping = registry.megatron_to_hf_lookup(hf_adapter.megatron_weight_name(layer, target))
    return any(key.startswith(hf_adapter.PREFIX + m + ".") for m in hf_adapter._modules(mapping).values())


def _fill(module: Any, full: dict[str, torch.Tensor], weights: Path, layer: int, target: str) -> None:
    """Copy this rank's shard of each full adapter tensor into ``module.adapter``."""
    from bridge_core.peft.lora import COLUMN

    split = {"lora_B": 0, "magnitude": 0} if module.mode == COLUMN else {"lora_A": 1}
    for part, value in full.items():
        param = getattr(module.adapter, part)
        if param is None:
            raise ConfigError(f"{weights}: layer {layer} {target} has a DoRA magnitude but use_dora is false")
        if part in split and module.tp > 1:
            shards = value.chunk(module.tp, dim=split[part]) if not module.gated else _gated(value, module.tp)
            value = shards[module.tp_rank]
        if tuple(value.shape) != tuple(param.shape):
            raise ConfigError(
                f"{weights}: layer {layer} {target} {part} has shape {tuple(value.shape)}, the model's shard "
                f"{tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(value)


def _gated(value: torch.Tensor, n: int) -> list[torch.Tensor]:
    from bridge_core.mappings.fused import split_gated

    return split_gated(value, n)


def hf_adapter_of_model(bridge: Any, model: Any) -> dict[str, torch.Tensor]:
    """The PEFT tensors of a live model's adapters (one rank, no tensor parallelism)."""
    from bridge_core.runtime.chunks import unwrap_chunks

    chunks = unwrap_chunks(model)
    present = lora_modules(chunks)
    if any(m.tp > 1 for _, _, m in present) or torch.distributed.get_world_size() > 1:
        raise ConfigError("hf_adapter_of_model reads one rank's adapters: run it on one rank")
    adapters: dict[Any, Any] = {}
    fused: dict[tuple[Any, str], dict[Any, dict[str, torch.Tensor]]] = {}
    for layer, target, module in present:
        parts = {k: v.detach().to("cpu", copy=True) for k, v in module.adapter.named_parameters()}
        if target in EXPERT_TARGETS:
            fused.setdefault((layer, target), {})[module.expert] = parts
        else:
            adapters[(layer, target)] = parts
    config = chunks[0].config
    bridge.bridge.select_hf_layout(config, None)
    registry = bridge.bridge.mapping_registry()
    tensors, _ = hf_adapter.to_hf(adapters, registry, config, bridge.hf.config)
    if fused:
        stacked = {
            key: {part: torch.stack([by[e][part] for e in sorted(by)]) for part in ("lora_A", "lora_B")}
            for key, by in fused.items()
        }
        tensors.update(experts.to_hf(stacked, registry, config, bridge.hf.config)[0])
    return tensors
