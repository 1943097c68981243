"""Adapters in Hugging Face PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

A fused Megatron linear's adapter becomes one adapter per HF projection, exactly: ``linear_qkv``'s
``A`` goes to ``q_proj``, ``k_proj`` and ``v_proj`` alike and its ``B`` (and DoRA magnitude) rows are
split by the bridge's own QKV mapping (``linear_fc1``: gate/up likewise); ``peft`` and vLLM load the
result without a custom loader. Row-parallel targets (``linear_proj``, ``linear_fc2``) map one to one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bridge_core.errors import CheckpointError, ConfigError
from bridge_core.mappings.base import MappingContext, MegatronParamMapping

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
OWNERS = {"linear_qkv": "self_attention", "linear_proj": "self_attention", "linear_fc1": "mlp", "linear_fc2": "mlp"}
ROW_TARGETS = ("linear_proj", "linear_fc2")
# stacked over the layers (``decoder.layers.<...>``, a leading layer axis) or one key per layer (models
# whose layers differ, e.g. dense and MoE ones: ``decoder.layers.<N>.<...>``)
_ADAPTER_KEY = re.compile(
    r"^decoder\.layers\.(?:(\d+)\.)?(self_attention|mlp)\.(linear_\w+)\.adapter\.(lora_A|lora_B|magnitude)$"
)

# One layer's adapter of one target: {"lora_A": [r, in], "lora_B": [out, r], "magnitude": [out]} (full tensors)
Adapters = dict[tuple[int, str], dict[str, torch.Tensor]]


def megatron_weight_name(layer: int, target: str) -> str:
    return f"decoder.layers.{layer}.{OWNERS[target]}.{target}.weight"


def _mapping(registry: Any, layer: int, target: str) -> MegatronParamMapping:
    name = megatron_weight_name(layer, target)
    mapping = registry.megatron_to_hf_lookup(name)
    if mapping is None:
        raise ConfigError(f"{name}: the bridge maps no HF tensor to it; its adapter cannot be placed")
    if target in ROW_TARGETS and type(mapping).megatron_to_hf is not MegatronParamMapping.megatron_to_hf:
        raise ConfigError(f"{name}: mapped by {type(mapping).__name__}, which reorders it; adapter export unsupported")
    return mapping


def _modules(mapping: MegatronParamMapping) -> dict[str, str]:
    """HF module of each HF weight the mapping writes (``model.layers.0.self_attn.q_proj.weight`` -> ``...q_proj``)."""
    out = {}
    for name in mapping.hf_names:
        if not name.endswith(".weight"):
            raise ConfigError(f"{name}: not a module weight; an adapter cannot be placed on it")
        out[name] = name[: -len(".weight")]
    return out


def _context(mapping: MegatronParamMapping, provider: Any, hf_config: Any, shape: tuple[int, ...]) -> MappingContext:
    return MappingContext(provider, hf_config, shape, mapping.index)


def to_hf(adapters: Adapters, registry: Any, provider: Any, hf_config: Any) -> tuple[dict[str, torch.Tensor], set[str]]:
    """PEFT tensors (``base_model.model.<module>.lora_A.weight`` ...) and the HF modules they adapt."""
    tensors: dict[str, torch.Tensor] = {}
    modules_out: set[str] = set()
    for (layer, target), parts in sorted(adapters.items()):
        mapping = _mapping(registry, layer, target)
        modules = _modules(mapping)
        rows = {k: v for k, v in parts.items() if k != "lora_A"}  # split like the weight's rows
        if target in ROW_TARGETS:
            per_hf = {name: dict(rows) for name in modules}
        else:
            per_hf = {name: {} for name in modules}
            for part, value in rows.items():
                pieces = value if value.dim() == 2 else value.unsqueeze(1)
                split = mapping.megatron_to_hf(pieces, _context(mapping, provider, hf_config, tuple(pieces.shape)))
                for name, piece in split.items():
                    per_hf[name][part] = piece if value.dim() == 2 else piece.squeeze(1)
        for name, module in modules.items():
            modules_out.add(module)
            key = PREFIX + module
            tensors[f"{key}.lora_A.weight"] = parts["lora_A"].contiguous()
            tensors[f"{key}.lora_B.weight"] = per_hf[name]["lora_B"].contiguous()
            if "magnitude" in per_hf[name]:
                tensors[f"{key}.lora_magnitude_vector"] = per_hf[name]["magnitude"].contiguous()
    return tensors, modules_out


def from_hf(
    tensors: dict[str, torch.Tensor], layer: int, target: str, registry: Any, provider: Any, hf_config: Any, where: str
) -> dict[str, torch.Tensor] | None:
    """The full Megatron adapter of one layer's target from PEFT tensors; None when it has none."""
    mapping = _mapping(registry, layer, target)
    modules = _modules(mapping)
    keys = {name: PREFIX + module for name, module in modules.items()}
    present = [name for name, key in keys.items() if f"{key}.lora_A.weight" in tensors]
    if not present:
        return None
    if len(present) != len(keys):
        missing = sorted(set(keys) - set(present))
        raise ConfigError(f"{where}: has adapters for {present[0]} but not for {missing[0]} (fused in Megatron)")
    a = {name: tensors[f"{keys[name]}.lora_A.weight"] for name in keys}
    first = next(iter(a.values()))
    for name, value in a.items():
        if value.shape != first.shape or not torch.equal(value, first):
            raise ConfigError(
                f"{where}: lora_A of {keys[name]} differs from that of {next(iter(keys.values()))}; Megatron's "
                f"fused {target} holds one A for them"
            )
    out = {"lora_A": first}
    for part, suffix in (("lora_B", "lora_B.weight"), ("magnitude", "lora_magnitude_vector")):
        values = {name: tensors.get(f"{keys[name]}.{suffix}") for name in keys}
        if all(v is None for v in values.values()):
            continue
        if any(v is None for v in values.values()):
            raise ConfigError(f"{where}: {suffix} is missing for some of {', '.join(keys.values())}")
        if target in ROW_TARGETS:
            out[part] = next(iter(values.values()))
            continue
        flat = {n: (v if v.dim() == 2 else v.unsqueeze(1)) for n, v in values.items()}
        arg = mapping.hf_weights_arg(flat)
        rows = sum(v.shape[0] for v in flat.values())
        shape = (rows, next(iter(flat.values())).shape[1])
        merged = mapping.hf_to_megatron(arg, _context(mapping, provider, hf_config, shape))
        out[part] = merged if values[next(iter(values))].dim() == 2 else merged.squeeze(1)
    if "lora_B" not in out:
        raise ConfigError(f"{where}: lora_B.weight is missing for {next(iter(keys.values()))}")
    return out


# -- checkpoint side ----------------------------------------------------------------------------


def read_checkpoint_adapters(weights_dir: Path) -> Adapters:
    """Every adapter of a PEFT training checkpoint's iteration folder, as full (unsplit) tensors.

    Reads only the adapter tensors (megatron-core reshards them from the saved layout to one rank).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from bridge_core.checkpoint_load import _COMMON_KWARGS, _safe_readers, _SafeLoadStrategy
    from bridge_core.parallel import ensure_process_group

    ensure_process_group()
    metadata = dist_checkpointing.load_tensors_metadata(str(weights_dir))
    request = {}
    for key, meta in metadata.items():
        if _ADAPTER_KEY.match(key):
            buffer = torch.empty(tuple(meta.global_shape), dtype=meta.dtype)
            request[key] = ShardedTensor.from_rank_offsets(key, buffer, replica_id=0)
    if not request:
        raise CheckpointError(f"{weights_dir}: holds no adapter tensors (decoder.layers.*.adapter.*)")
    with _safe_readers():
        loaded = dist_checkpointing.load(
            request, str(weights_dir), sharded_strategy=_SafeLoadStrategy(), **_COMMON_KWARGS
        )
    adapters: Adapters = {}
    for key in request:
        layer, _, target, part = _ADAPTER_KEY.match(key).groups()
        if layer is not None:
            adapters.setdefault((int(layer), target), {})[part] = loaded[key]
            continue
        for index, value in enumerate(loaded[key]):
            adapters.setdefault((index, target), {})[part] = value.clone()
    return adapters


def target_pattern(modules: set[str]) -> str:
    """A regex matching exactly ``modules`` (``peft`` full-matches a string ``target_modules``), compact:
    ``model\\.layers\\.(?:0|1)\\.self_attn\\.q_proj|...``. Leaf names alone would also match what we did
    not adapt (``peft`` places ``down_proj`` on transformers 5's fused MoE expert parameters too)."""
    layers: dict[tuple[str, str], list[str]] = {}
    for module in sorted(modules):
        m = re.match(r"^(.*\.layers\.)(\d+)(\..*)$", module)
        head, number, tail = m.groups() if m else (module, "", "")
        layers.setdefault((head, tail), []).append(number)
    parts = []
    for (head, tail), numbers in sorted(layers.items()):
        numbers = sorted(set(numbers), key=lambda n: int(n) if n else -1)
        middle = f"(?:{'|'.join(numbers)})" if len(numbers) > 1 else numbers[0]
        parts.append(re.escape(head) + middle + re.escape(tail))
    return "|".join(parts)


def adapter_config(document: dict, modules: set[str], base: str | None) -> dict:
    """``adapter_config.json`` of ``peft.json``'s settings, as ``peft.LoraConfig`` writes it."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": document["rank"],
        "lora_alpha": document["alpha"],
        "lora_dropout": document.get("dropout", 0.0),
        "target_modules": target_pattern(modules),
        "use_dora": document["scheme"] == "dora",
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }


def write_adapter_folder(folder: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    from safetensors.torch import save_file

    own = {name: tensor.clone() for name, tensor in tensors.items()}  # A is shared by fused projections
    save_file(own, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
