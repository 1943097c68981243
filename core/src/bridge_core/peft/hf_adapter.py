"""Adapters in Hugging Face PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

A fused Megatron linear's adapter becomes one adapter per HF projection, exactly: ``linear_qkv``'s
``A`` goes to ``q_proj``, ``k_proj`` and ``v_proj`` alike and its ``B`` (and DoRA magnitude) rows are
split by the bridge's own QKV mapping (``linear_fc1``: gate/up likewise); ``peft`` and vLLM load the
result without a custom loader. Row-parallel targets (``linear_proj``, ``linear_fc2``) map one to one.
MoE expert adapters go to ``target_parameters`` (``bridge_core.peft.experts``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from bridge_core.errors import CheckpointError, ConfigError
from bridge_core.mappings.base import MappingContext, MegatronParamMapping
from bridge_core.peft import experts

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
OWNERS = {
    "linear_qkv": "self_attention",
    "linear_proj": "self_attention",
    "linear_fc1": "mlp",
    "linear_fc2": "mlp",
    "linear_q_proj": "self_attention",
    "linear_q_up_proj": "self_attention",
    "linear_kv_up_proj": "self_attention",
}
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


def _role_parts(tensors: dict[str, torch.Tensor], keys: dict[str, str], where: str) -> dict[str, dict]:
    """HF weight name -> its module's ``lora_A``, ``lora_B`` (and ``magnitude``), for the modules adapted."""
    out = {}
    for name, key in keys.items():
        if f"{key}.lora_A.weight" not in tensors:
            continue
        if f"{key}.lora_B.weight" not in tensors:
            raise ConfigError(f"{where}: {key}.lora_B.weight is missing")
        parts = {"lora_A": tensors[f"{key}.lora_A.weight"], "lora_B": tensors[f"{key}.lora_B.weight"]}
        if f"{key}.lora_magnitude_vector" in tensors:
            parts["magnitude"] = tensors[f"{key}.lora_magnitude_vector"]
        out[name] = parts
    return out


def _keys(mapping: MegatronParamMapping) -> dict[str, str]:
    return {name: PREFIX + module for name, module in _modules(mapping).items()}


def _shares_a(parts: dict[str, dict], keys: dict[str, str]) -> bool:
    """Every projection of the fused linear is adapted, with one and the same ``A``."""
    a = [p["lora_A"] for p in parts.values()]
    return len(parts) == len(keys) and all(x.shape == a[0].shape and torch.equal(x, a[0]) for x in a)


def blocks_needed(tensors: dict[str, torch.Tensor], registry: Any, num_layers: int, where: str) -> int:
    """How many rank-r blocks the Megatron adapters need to hold the HF ones exactly: 1 when every fused
    linear's projections share one ``A`` (``bridgectl peft export``'s output); else the most adapted
    projections of one fused linear (``peft``'s usual q_proj + v_proj with their own ``A``: 2)."""
    blocks = 1
    for layer in range(num_layers):
        for target in OWNERS:
            mapping = registry.megatron_to_hf_lookup(megatron_weight_name(layer, target))
            if mapping is None:
                continue
            keys = _keys(mapping)
            parts = _role_parts(tensors, keys, where)
            if parts and not _shares_a(parts, keys):
                blocks = max(blocks, len(parts))
    return blocks


def from_hf(
    tensors: dict[str, torch.Tensor],
    layer: int,
    target: str,
    registry: Any,
    provider: Any,
    hf_config: Any,
    where: str,
    blocks: int = 1,
    full_rows: int | None = None,
) -> dict[str, torch.Tensor] | None:
    """The full Megatron adapter of one layer's target from PEFT tensors; None when it has none.

    ``blocks`` > 1 (see ``blocks_needed``): the adapter has rank ``blocks * r``; projection ``i``'s ``A``
    fills rows ``i*r:(i+1)*r`` and its ``B`` the matching columns, zeros elsewhere (a projection without
    an adapter has ``B = 0``), so that ``B A`` of each projection is exactly its own. ``full_rows``: the
    base weight's (unsplit) rows, for the zero ``B`` of a projection without adapter.
    """
    mapping = _mapping(registry, layer, target)
    keys = _keys(mapping)
    parts = _role_parts(tensors, keys, where)
    if not parts:
        return None
    first = next(iter(parts.values()))
    rank, width = first["lora_A"].shape
    dora = [name for name, p in parts.items() if "magnitude" in p]
    if dora and (len(dora) != len(keys)):
        missing = next(keys[n] for n in keys if n not in dora)
        raise ConfigError(f"{where}: {missing} has no DoRA magnitude; Megatron fuses it with {keys[dora[0]]}")
    if blocks == 1 and _shares_a(parts, keys):
        a = first["lora_A"]
        b = {name: p["lora_B"] for name, p in parts.items()}
    else:
        order = [name for name in keys if name in parts]
        shared = _shares_a(parts, keys)
        a = torch.zeros(blocks * rank, width, dtype=first["lora_A"].dtype)
        b = {}
        for i, name in enumerate(order):
            block = 0 if shared else i
            a[block * rank : (block + 1) * rank] = parts[name]["lora_A"]
            lora_b = parts[name]["lora_B"]
            b[name] = torch.zeros(lora_b.shape[0], blocks * rank, dtype=lora_b.dtype)
            b[name][:, block * rank : (block + 1) * rank] = lora_b
        if len(order) < len(keys):
            if full_rows is None:
                raise ConfigError(f"{where}: {target} of layer {layer} is adapted only in part")
            zeros = torch.zeros(full_rows, blocks * rank, dtype=first["lora_B"].dtype)
            context = _context(mapping, provider, hf_config, tuple(zeros.shape))
            for name, value in mapping.megatron_to_hf(zeros, context).items():
                b.setdefault(name, value)
    out = {"lora_A": a, "lora_B": _to_megatron(mapping, b, target, provider, hf_config)}
    if dora:
        magnitude = {name: parts[name]["magnitude"] for name in keys}
        out["magnitude"] = _to_megatron(mapping, magnitude, target, provider, hf_config)
    return out


def _to_megatron(mapping: Any, values: dict[str, torch.Tensor], target: str, provider: Any, hf_config: Any) -> Any:
    """Per-projection rows (``B`` or a magnitude) -> the fused Megatron tensor, by the weight's mapping."""
    if target in ROW_TARGETS or len(values) == 1:
        return next(iter(values.values()))
    flat = {n: (v if v.dim() == 2 else v.unsqueeze(1)) for n, v in values.items()}
    shape = (sum(v.shape[0] for v in flat.values()), next(iter(flat.values())).shape[1])
    merged = mapping.hf_to_megatron(mapping.hf_weights_arg(flat), _context(mapping, provider, hf_config, shape))
    return merged if next(iter(values.values())).dim() == 2 else merged.squeeze(1)


# -- checkpoint side ----------------------------------------------------------------------------


def read_checkpoint_adapters(weights_dir: Path) -> Adapters:
    """Every adapter of a PEFT training checkpoint's iteration folder, as full (unsplit) tensors.

    Reads only the adapter tensors (megatron-core reshards them from the saved layout to one rank).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    from bridge_core.checkpoints.checkpoint_load import safe_dist_load
    from bridge_core.runtime.parallel import ensure_process_group

    ensure_process_group()
    metadata = dist_checkpointing.load_tensors_metadata(str(weights_dir))
    request = {}
    for key, meta in metadata.items():
        if _ADAPTER_KEY.match(key) or experts.CHECKPOINT_KEY.match(key):
            buffer = torch.empty(tuple(meta.global_shape), dtype=meta.dtype)
            request[key] = ShardedTensor.from_rank_offsets(key, buffer, replica_id=0)
    if not request:
        raise CheckpointError(f"{weights_dir}: holds no adapter tensors (decoder.layers.*.adapter.*)")
    loaded = safe_dist_load(request, weights_dir)
    adapters: Adapters = {}
    for key in request:
        match = _ADAPTER_KEY.match(key)
        if match is not None:
            layer, _, target, part = match.groups()
        else:  # an expert adapter: [experts, ...] per layer
            match = experts.CHECKPOINT_KEY.match(key)
            assert match is not None, "request holds adapter keys only"
            layer, linear, part = match.groups()
            target = f"experts.{linear}"
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


def adapter_config(document: dict, modules: set[str], base: str | None, parameters: list[str] | None = None) -> dict:
    """``adapter_config.json`` of ``peft.json``'s settings, as ``peft.LoraConfig`` writes it; ``parameters``:
    the expert tensors adapted (``target_parameters``)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": document["rank"],
        "lora_alpha": document["alpha"],
        "lora_dropout": document.get("dropout", 0.0),
        "target_modules": target_pattern(modules) if modules else None,
        "target_parameters": parameters or None,
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
