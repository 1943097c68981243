"""MoE expert adapters in HF PEFT's format: ``target_parameters`` on transformers 5's fused expert tensors.

transformers 5 keeps an MoE layer's experts as 3-D parameters whatever the checkpoint's layout on disk
(``mlp.experts.gate_up_proj`` [E, 2I, H], gate rows then up; ``mlp.experts.down_proj`` [E, H, I]).
``peft``'s ``ParamWrapper`` adapts one with ``lora_A.weight`` [E*r, in] (expert-major: rows ``e*r:(e+1)*r``
are expert e's ``A``) and ``lora_B.weight`` [out, r*E] (rank-major: column ``k*E + e`` is column k of expert
e's ``B``); expert e's update is ``(alpha / r) B_e A_e``. Two parameters of one module nest: the one the
module registers first is wrapped first, so its tensors sit under ``<module>.base_layer.``.

Megatron side (``Adapters`` entries of the expert targets): ``lora_A`` [E, r, in], ``lora_B`` [E, out, r],
over the global experts.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from bridge_core.errors import ConfigError
from bridge_core.mappings.base import MappingContext

PREFIX = "base_model.model."
FC1, FC2 = "experts.linear_fc1", "experts.linear_fc2"
# stacked over the layers or one key per layer, the experts on the next axis (SequentialMLP's layout)
CHECKPOINT_KEY = re.compile(
    r"^decoder\.layers\.(?:(\d+)\.)?mlp\.experts\.experts\.(linear_fc[12])\.adapter\.(lora_A|lora_B)$"
)


def weight_name(layer: int, target: str, expert: int) -> str:
    return f"decoder.layers.{layer}.mlp.experts.local_experts.{expert}.{target.rsplit('.', 1)[-1]}.weight"


def transformers_params(hf_config: Any) -> dict[str, list[str]]:
    """Every module of the transformers model with 3-D parameters -> their names, in registration order
    (the model built on the meta device: no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    out = {}
    for name, module in model.named_modules():
        own = [n for n, p in module.named_parameters(recurse=False) if p.dim() == 3]
        if own:
            out[name] = own
    return out


def _mapping(registry: Any, layer: int, target: str, expert: int) -> Any:
    name = weight_name(layer, target, expert)
    mapping = registry.megatron_to_hf_lookup(name)
    if mapping is None:
        raise ConfigError(f"{name}: the bridge maps no HF tensor to it; its adapter cannot be placed")
    if getattr(mapping, "transpose", False):
        raise ConfigError(f"{name}: HF stores it transposed ({type(mapping).__name__}); expert adapters unsupported")
    return mapping


def hf_param(registry: Any, layer: int, target: str, params: dict[str, list[str]]) -> tuple[str, str]:
    """(module, parameter) of transformers' model that ``target`` of ``layer`` lives in."""
    mapping = _mapping(registry, layer, target, 0)
    hf = mapping.hf_names[0]
    if getattr(mapping, "stacked", False):
        module, param = hf.rsplit(".", 1)
    else:  # one tensor per expert on disk (``experts.0.gate_proj.weight``): transformers fuses them in memory
        module = re.sub(r"\.experts\.\d+\..*$", ".experts", hf)
        param = "gate_up_proj" if target == FC1 else "down_proj"
    for candidate in (module, re.sub(r"\.[^.]+\.experts$", ".mlp.experts", module)):
        if param in params.get(candidate, ()):
            return candidate, param
    raise ConfigError(f"{weight_name(layer, target, 0)}: transformers' model has no 3-D {module}.{param} to adapt")


def _context(mapping: Any, provider: Any, hf_config: Any, shape: tuple[int, ...]) -> MappingContext:
    return MappingContext(provider, hf_config, shape, mapping.index)


def _rows_to_hf(mapping: Any, rows: torch.Tensor, provider: Any, hf_config: Any) -> torch.Tensor:
    """Megatron rows (fc1's [gate; up]) -> the rows of transformers' fused parameter (its pieces in order)."""
    pieces = mapping.megatron_to_hf(rows, _context(mapping, provider, hf_config, tuple(rows.shape)))
    return torch.cat([pieces[name] for name in mapping.hf_names], dim=0)


def _rows_from_hf(mapping: Any, rows: torch.Tensor, provider: Any, hf_config: Any) -> torch.Tensor:
    names = mapping.hf_names
    flat = dict(zip(names, rows.chunk(len(names), dim=0)))
    return mapping.hf_to_megatron(
        mapping.hf_weights_arg(flat), _context(mapping, provider, hf_config, tuple(rows.shape))
    )


def _keys(module: str, targeted: list[str], params: dict[str, list[str]]) -> dict[str, str]:
    """Parameter -> its PEFT key prefix, as ``peft`` nests the wrappers of ``targeted`` on ``module``."""
    order = [p for p in params[module] if p in targeted]
    return {p: PREFIX + module + ".base_layer" * (len(order) - 1 - i) for i, p in enumerate(order)}


def to_hf(adapters: dict, registry: Any, provider: Any, hf_config: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """PEFT tensors of the expert adapters and their ``target_parameters`` (full names)."""
    params = transformers_params(hf_config)
    placed: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (layer, target), parts in sorted(adapters.items()):
        module, param = hf_param(registry, layer, target, params)
        a, b = parts["lora_A"], parts["lora_B"]
        if target == FC1:
            b = torch.stack(
                [_rows_to_hf(_mapping(registry, layer, target, e), b[e], provider, hf_config) for e in range(len(b))]
            )
        placed.setdefault(module, {})[param] = (a.reshape(-1, a.shape[-1]), b.permute(1, 2, 0).reshape(b.shape[1], -1))
    tensors = {}
    for module, by_param in placed.items():
        for param, key in _keys(module, list(by_param), params).items():
            tensors[f"{key}.lora_A.weight"] = by_param[param][0].contiguous()
            tensors[f"{key}.lora_B.weight"] = by_param[param][1].contiguous()
    return tensors, sorted(f"{m}.{p}" for m, by_param in placed.items() for p in by_param)


def targeted(spec: list[str] | None, params: dict[str, list[str]]) -> set[str]:
    """The full names ``peft`` matches with ``target_parameters`` (a name or its dotted suffix)."""
    full = {f"{m}.{p}" for m, names in params.items() for p in names}
    return {n for n in full for t in spec or () if n == t or n.endswith("." + t)}


def from_hf(
    tensors: dict[str, torch.Tensor],
    layer: int,
    target: str,
    registry: Any,
    provider: Any,
    hf_config: Any,
    params: dict[str, list[str]],
    chosen: set[str],
    where: str,
) -> tuple[dict[str, torch.Tensor], list[str]] | None:
    """The Megatron adapter (``lora_A`` [E, r, in], ``lora_B`` [E, out, r]) of ``target`` of ``layer`` and the
    PEFT keys it used; None when ``chosen`` (the targeted full names) does not hold its parameter."""
    module, param = hf_param(registry, layer, target, params)
    if f"{module}.{param}" not in chosen:
        return None
    key = _keys(module, [p for p in params[module] if f"{module}.{p}" in chosen], params)[param]
    names = [f"{key}.lora_A.weight", f"{key}.lora_B.weight"]
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ConfigError(f"{where}: {missing[0]} is missing (target_parameters names {module}.{param})")
    a, b = tensors[names[0]], tensors[names[1]]
    experts = params_experts(hf_config, registry, layer, target)
    if a.shape[0] % experts or b.shape[1] != a.shape[0]:
        raise ConfigError(f"{where}: {names[0]} has shape {tuple(a.shape)}, not [r * {experts}, in] matching lora_B")
    a = a.reshape(experts, -1, a.shape[-1])
    b = b.reshape(b.shape[0], -1, experts).permute(2, 0, 1)
    if target == FC1:
        b = torch.stack(
            [_rows_from_hf(_mapping(registry, layer, target, e), b[e], provider, hf_config) for e in range(experts)]
        )
    return {"lora_A": a.contiguous(), "lora_B": b.contiguous()}, names


def params_experts(hf_config: Any, registry: Any, layer: int, target: str) -> int:
    """How many experts the layer has (the HF config's count)."""
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if getattr(hf_config, key, None):
            return int(getattr(hf_config, key))
    raise ConfigError(f"{weight_name(layer, target, 0)}: the HF config names no expert count")


def merged_deltas(adapters: dict, registry: Any, provider: Any, hf_config: Any, scale: float) -> dict[str, list]:
    """HF tensor on disk -> ``[(expert index of a stacked tensor or None, fp32 (alpha / r) B_e A_e in its layout)]``."""
    out: dict[str, list] = {}
    for (layer, target), parts in sorted(adapters.items()):
        for e in range(len(parts["lora_A"])):
            mapping = _mapping(registry, layer, target, e)
            delta = scale * (parts["lora_B"][e].float() @ parts["lora_A"][e].float())
            index = mapping.index if getattr(mapping, "stacked", False) else None
            for name, piece in mapping.megatron_to_hf(
                delta, _context(mapping, provider, hf_config, tuple(delta.shape))
            ).items():
                out.setdefault(name, []).append((index, piece))
    return out


def merge_into(weight: torch.Tensor, deltas: list) -> torch.Tensor:
    """``W + delta`` (a stacked tensor: slice by slice), in fp32, cast back to the weight's dtype."""
    merged = weight.float().clone()
    for index, delta in deltas:
        if index is None:
            merged += delta
        else:
            merged[index] += delta
    return merged.to(weight.dtype)
