"""The command line's jobs as functions: import, export, load a model for generation or checks.

Every rank calls these (one process per rank); output and progress come from rank 0 only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bridge_core import CONTRACT_VERSION, __version__
from bridge_core.auto_bridge import AutoBridge
from bridge_core.errors import CheckpointError
from bridge_core.parallelism import Parallelism  # re-exported: it used to live here
from bridge_core.progress import Progress, stage
from bridge_core.timing import timeline


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def say(*args: Any) -> None:
    """Print on rank 0 only."""
    if rank() == 0:
        print(*args, flush=True)


def _gather(value: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def megatron_parameters(model: list) -> str:
    """``182 Megatron parameters (0.54 GB)``, or with several ranks ``546 Megatron parameter shards on
    3 ranks (0.54 GB)``: this rank's chunks, added up over every rank (every rank calls this)."""
    params = [p for chunk in model for p in chunk.parameters()]
    counts = _gather((len(params), sum(p.numel() * p.element_size() for p in params)))
    count, nbytes = sum(c for c, _ in counts), sum(b for _, b in counts)
    if len(counts) == 1:
        return f"{count} Megatron parameters ({nbytes / 1e9:.2f} GB)"
    return f"{count} Megatron parameter shards on {len(counts)} ranks ({nbytes / 1e9:.2f} GB)"


def hf_tensors(count: int, nbytes: int) -> str:
    return f"{count} HF tensors ({nbytes / 1e9:.2f} GB)"


def provenance(bridge: AutoBridge, source: str, parallel: Parallelism) -> dict[str, Any]:
    """Where a checkpoint came from and what made it."""
    import megatron.core
    import transformers

    reg = bridge.registration
    return {
        "source": str(source),
        "architecture": bridge.hf.architecture,
        "plugin": {
            "entry_point": reg.plugin,
            "distribution": reg.distribution,
            "version": reg.version,
            "bridge": reg.bridge,
        },
        "bridge_core": __version__,
        "contract": CONTRACT_VERSION,
        "transformers": transformers.__version__,
        "megatron_core": getattr(megatron.core, "__version__", "unknown"),
        "torch": torch.__version__,
        "parallelism": {"tp": parallel.tp, "pp": parallel.pp, "ep": parallel.ep, "etp": parallel.etp},
        "hf_config": bridge.hf.config_dict,
    }


def build_from_hf(
    hf_model: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> tuple[AutoBridge, Any, list]:
    """Bridge, provider and this rank's model chunks loaded from an HF folder (no random init)."""
    action = progress.action if progress is not None else "bridgectl"
    stage(action, "building the Megatron model")
    bridge = AutoBridge.from_hf_pretrained(hf_model, trust_remote_code=trust_remote_code, torch_dtype=dtype)
    provider = parallel.apply(bridge.to_megatron_provider())
    provider.perform_initialization = False  # every parameter is filled and coverage-checked
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    timeline().mark("building the model")
    bridge.load_hf_weights(model, progress=progress)
    timeline().mark("reading weights")
    return bridge, provider, model


def import_checkpoint(
    hf_model: str | Path,
    megatron_path: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    source: str | None = None,
) -> Path:
    """HF folder -> Megatron-LM ``torch_dist`` checkpoint (run config, provenance, tokenizer)."""
    from bridge_core.megatron_checkpoint import save_megatron_checkpoint
    from bridge_core.output_dir import check_output_dir

    check_output_dir(megatron_path, overwrite, "--megatron-path")
    timeline().mark("loading libraries")
    where = f" (rank 0 of {parallel.world_size})" if parallel.world_size > 1 else ""
    progress = Progress("import", enabled=rank() == 0, unit="Megatron parameters", stage="reading weights" + where)
    bridge, provider, model = build_from_hf(hf_model, parallel, dtype, trust_remote_code, progress)
    progress.finish()
    source_tensors = hf_tensors(len(bridge.hf.weights), bridge.hf.weights.total_bytes)
    say(f"import: read {source_tensors} into {megatron_parameters(model)} in {progress.seconds:.2f} s")
    stage("import", f"writing {megatron_path}")
    path = save_megatron_checkpoint(
        model,
        provider,
        megatron_path,
        run_config={
            "command": "import",
            "parallelism": provenance(bridge, source or hf_model, parallel)["parallelism"],
        },
        provenance=provenance(bridge, source or hf_model, parallel),
        tokenizer_files=bridge.hf.side_files(),
        overwrite=overwrite,
    )
    timeline().mark("writing")
    say(f"import: wrote {megatron_path}; {timeline().summary()}")
    return path


@dataclass
class LoadedCheckpoint:
    """A Megatron checkpoint loaded into this rank's model chunks, with its bridge."""

    bridge: AutoBridge
    provider: Any
    model: list
    info: Any
    side_files: list[Path]


def _hf_config_folder(info: Any, workdir: Path) -> Path:
    config = info.provenance.get("hf_config")
    if not config:
        raise CheckpointError(
            f"{info.path / 'provenance.json'}: no stored HF config; pass --hf-model <reference HF folder>"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    return workdir


def load_checkpoint(
    megatron_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedCheckpoint:
    """Build the model at ``parallel`` from a checkpoint's run config and load its weights (any TP/PP)."""
    from bridge_core.megatron_checkpoint import load_megatron_checkpoint, load_weights_into

    info = load_megatron_checkpoint(megatron_path)
    with tempfile.TemporaryDirectory(prefix="bridgectl-config-") as tmp:
        reference = hf_model if hf_model is not None else _hf_config_folder(info, Path(tmp))
        bridge = AutoBridge.from_hf_pretrained(reference, trust_remote_code=trust_remote_code)
        _ = bridge.hf.config  # read while the folder exists
    provider = parallel.apply(bridge.bridge.PROVIDER_CLASS(**info.provider_kwargs()))
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    load_weights_into(model, info)
    if dtype is not None:
        cast_model(model, provider, dtype)
    side = sorted(info.tokenizer_dir.iterdir()) if info.tokenizer_dir else []
    return LoadedCheckpoint(bridge, provider, model, info, side if hf_model is None else bridge.hf.side_files())


def cast_model(model: list, provider: Any, dtype: str | torch.dtype) -> None:
    """Cast loaded chunks to ``dtype`` for computation (e.g. fp32 logit checks of a bf16 model)."""
    from bridge_core.config_translation import parse_dtype

    want = parse_dtype(dtype)
    for chunk in model:
        chunk.to(want)
    provider.params_dtype = want
    provider.pipeline_dtype = want
    provider.bf16, provider.fp16 = want == torch.bfloat16, want == torch.float16


def export_checkpoint(
    megatron_path: str | Path,
    hf_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> Path | None:
    """Megatron checkpoint -> complete HF folder (weights, regenerated config, tokenizer, generation config)."""
    from bridge_core.output_dir import check_output_dir

    check_output_dir(hf_path, overwrite, "--hf-path")
    timeline().mark("loading libraries")
    stage("export", f"loading {megatron_path}")
    loaded = load_checkpoint(megatron_path, parallel, hf_model, trust_remote_code=trust_remote_code)
    timeline().mark("loading the checkpoint")
    progress = Progress("export", enabled=rank() == 0, unit="HF tensors", stage="writing")
    out = loaded.bridge.save_hf_pretrained(
        loaded.model,
        hf_path,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
        dtype=dtype,
        progress=progress,
        side_files=loaded.side_files,
    )
    progress.finish()
    timeline().mark("writing")
    params = megatron_parameters(loaded.model)
    say(f"export: wrote {hf_tensors(progress.tensors, progress.bytes)} from {params} to {hf_path}")
    say(f"export: {timeline().summary()}")
    return out
