"""``bridgectl peft export`` and ``bridgectl peft merge``: a PEFT training checkpoint -> HF folders.

Both run in one process: megatron-core gathers the adapters from whatever layout they were saved at.
``merge`` writes ``W + (alpha / r) B A`` (DoRA: each row rescaled to its magnitude) into the base
model's HF weights, tensor by tensor, as ``peft``'s ``merge_and_unload`` computes it (in fp32, cast
back to the base's dtype).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from bridge_core.errors import CheckpointError
from bridge_core.peft import experts, hf_adapter
from bridge_core.peft.document import PEFT_FILE, read_peft_document
from bridge_core.training.config import EXPERT_TARGETS


def _peft_checkpoint(megatron_path: str | Path) -> tuple[Any, dict]:
    from bridge_core.checkpoints.checkpoint_format import load_megatron_checkpoint

    info = load_megatron_checkpoint(megatron_path)
    document = read_peft_document(megatron_path)
    if document is None:
        raise CheckpointError(
            f"{megatron_path}: no {PEFT_FILE}; not a PEFT training checkpoint (use 'bridgectl export' for full models)"
        )
    return info, document


def _bridge_and_provider(info: Any) -> tuple[Any, Any]:
    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.conversion.workflows import _hf_config_folder

    with tempfile.TemporaryDirectory(prefix="bridgectl-peft-") as tmp:
        bridge = AutoBridge.from_hf_pretrained(_hf_config_folder(info, Path(tmp)))
        _ = bridge.hf.config  # read while the folder exists
    provider = bridge.bridge.PROVIDER_CLASS(**info.provider_kwargs(bridge.bridge.PROVIDER_CLASS))
    bridge.bridge.select_hf_layout(provider, None)
    return bridge, provider


def _expert_adapters(adapters: dict) -> dict:
    return {k: v for k, v in adapters.items() if k[1] in EXPERT_TARGETS}


def hf_adapter_tensors(megatron_path: str | Path) -> tuple[dict[str, torch.Tensor], dict, Any]:
    """The checkpoint's adapters as PEFT tensors, its ``adapter_config.json`` and the AutoBridge."""
    info, document = _peft_checkpoint(megatron_path)
    bridge, provider = _bridge_and_provider(info)
    adapters = hf_adapter.read_checkpoint_adapters(info.weights_dir)
    registry = bridge.bridge.mapping_registry()
    expert = _expert_adapters(adapters)
    dense = {k: v for k, v in adapters.items() if k not in expert}
    tensors, modules = hf_adapter.to_hf(dense, registry, provider, bridge.hf.config)
    parameters = None
    if expert:
        expert_tensors, parameters = experts.to_hf(expert, registry, provider, bridge.hf.config)
        tensors.update(expert_tensors)
    base = document["base"].get("hf_model") or document["base"].get("megatron_path")
    return tensors, hf_adapter.adapter_config(document, modules, base, parameters), bridge


def _expert_deltas(megatron_path: str | Path, scale: float) -> dict[str, list]:
    """The merged updates of the checkpoint's expert adapters, by HF tensor on disk (``experts.merged_deltas``)."""
    info, _ = _peft_checkpoint(megatron_path)
    expert = _expert_adapters(hf_adapter.read_checkpoint_adapters(info.weights_dir))
    if not expert:
        return {}
    bridge, provider = _bridge_and_provider(info)
    return experts.merged_deltas(expert, bridge.bridge.mapping_registry(), provider, bridge.hf.config, scale)


def export_adapter(megatron_path: str | Path, hf_path: str | Path, overwrite: bool = False) -> Path:
    """Write the HF PEFT folder of a PEFT checkpoint's latest iteration."""
    from bridge_core.checkpoints.output_dir import atomic_output_dir, check_output_dir

    check_output_dir(hf_path, overwrite, "--hf-path")
    tensors, config, _ = hf_adapter_tensors(megatron_path)
    with atomic_output_dir(hf_path, overwrite, "--hf-path") as tmp:
        hf_adapter.write_adapter_folder(tmp, tensors, config)
    return Path(hf_path)


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float, magnitude: Any) -> torch.Tensor:
    """``W + scale B A``, rescaled row by row to ``magnitude`` for DoRA; computed in fp32."""
    merged = weight.float() + scale * (b.float() @ a.float())
    if magnitude is not None:
        merged = merged * (magnitude.float() / merged.norm(dim=1)).unsqueeze(1)
    return merged.to(weight.dtype)


def _base_folder(document: dict, base: str | Path | None, workdir: Path, megatron_path: str | Path) -> Path:
    """The base model's HF folder: ``--base``, else the recorded one (a Megatron base is exported first)."""
    from bridge_core.conversion.workflows import export_checkpoint
    from bridge_core.runtime.parallelism import Parallelism

    recorded = document["base"]
    if base is None and recorded.get("hf_model"):
        base = recorded["hf_model"]
    if base is None and recorded.get("megatron_path"):
        out = workdir / "base-hf"
        export_checkpoint(recorded["megatron_path"], out, Parallelism())
        return out
    if base is None:
        raise CheckpointError(f"{megatron_path}/{PEFT_FILE}: names no base model; pass --base HF_FOLDER")
    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: the base model's HF folder (config.json) is not there; pass --base HF_FOLDER")
    return folder


def merge_adapter(
    megatron_path: str | Path,
    hf_path: str | Path,
    base: str | Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Write a full HF folder: the base's weights with the adapters merged, its config and tokenizer."""
    from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint
    from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter
    from bridge_core.checkpoints.output_dir import atomic_output_dir, check_output_dir

    check_output_dir(hf_path, overwrite, "--hf-path")
    _, document = _peft_checkpoint(megatron_path)
    tensors, config, _ = hf_adapter_tensors(megatron_path)
    scale = float(config["lora_alpha"]) / int(config["r"])
    fused = {p.rsplit(".", 1)[0] for p in config.get("target_parameters") or ()}  # merged from their deltas
    adapters = {m: v for m, v in _by_module(tensors).items() if m.replace(".base_layer", "") not in fused}
    deltas = _expert_deltas(megatron_path, scale)
    with tempfile.TemporaryDirectory(prefix="bridgectl-merge-") as work:
        folder = _base_folder(document, base, Path(work), megatron_path)
        source = HFCheckpoint(folder)
        weights = source.weights
        missing = sorted(({f"{m}.weight" for m in adapters} | set(deltas)) - set(weights))
        if missing:
            raise CheckpointError(f"{folder}: has no {missing[0]}, which the adapter targets; is it the base model?")
        with atomic_output_dir(hf_path, overwrite, "--hf-path") as tmp:
            with ShardedSafetensorsWriter(tmp, max_shard_size) as writer:
                for name in weights:
                    tensor = weights[name]
                    module = name[: -len(".weight")] if name.endswith(".weight") else None
                    if module in adapters:
                        a, b, magnitude = adapters[module]
                        tensor = merged_weight(tensor, a, b, scale, magnitude)
                    elif name in deltas:  # an MoE expert's (or a stacked tensor of them)
                        tensor = experts.merge_into(tensor, deltas[name])
                    writer.add(name, tensor)
                writer.finish()
            for file in source.side_files():
                shutil.copy2(file, tmp / Path(file).name)
            shutil.copy2(folder / "config.json", tmp / "config.json")
    return Path(hf_path)


def _by_module(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, Any]]:
    out = {}
    for key in tensors:
        if key.endswith(".lora_A.weight"):
            module = key[len(hf_adapter.PREFIX) : -len(".lora_A.weight")]
            base = hf_adapter.PREFIX + module
            out[module] = (tensors[key], tensors[f"{base}.lora_B.weight"], tensors.get(f"{base}.lora_magnitude_vector"))
    return out


def load_checkpoint_adapters(model: Any, megatron_path: str | Path) -> dict:
    """Fill the adapters of a model ``apply_peft`` wrapped from a PEFT checkpoint (every rank; any layout).

    Returns its ``peft.json``. The base weights are left as they are (the caller loaded the base).
    """
    from bridge_core.checkpoints.checkpoint_format import CONTENT_METADATA, model_keys
    from bridge_core.checkpoints.checkpoint_load import safe_dist_load
    from bridge_core.peft.apply import adapter_state
    from bridge_core.runtime.chunks import unwrap_chunks

    info, document = _peft_checkpoint(megatron_path)
    chunks = unwrap_chunks(model)
    keys = model_keys(len(chunks))
    state = {k: adapter_state(c.sharded_state_dict(metadata=dict(CONTENT_METADATA))) for k, c in zip(keys, chunks)}
    loaded = safe_dist_load(state, info.weights_dir)
    for key, chunk in zip(keys, chunks):
        result = chunk.load_state_dict(loaded[key], strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{info.weights_dir}: unexpected adapter tensors {result.unexpected_keys[:3]}")
    return document
