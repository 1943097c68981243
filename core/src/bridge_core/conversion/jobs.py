"""The command line's jobs for a given bridge class: import, export, load a model for generation or checks.

``workflows`` runs them with ``AutoBridge`` (what ``bridgectl`` calls), ``AutoBridge``'s Megatron-Bridge
names with their own class: taking the class as an argument keeps the imports one way (workflows ->
auto_bridge -> megatron_bridge_names -> jobs). Every rank calls these (one process per rank); output and
progress come from rank 0 only.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from bridge_core import CONTRACT_VERSION, __version__
from bridge_core.checkpoints.input_files import folder_files
from bridge_core.errors import CheckpointError
from bridge_core.progress import Progress, stage
from bridge_core.runtime.parallel import rank
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.timing import timeline

if TYPE_CHECKING:
    from bridge_core.conversion.auto_bridge import AutoBridge


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


def provenance(bridge: AutoBridge, source: str | Path, parallel: Parallelism) -> dict[str, Any]:
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
    bridge_class: type[AutoBridge],
    hf_model: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    accept_config: Iterable[str] = (),
) -> tuple[AutoBridge, Any, list]:
    """Bridge, provider and this rank's model chunks loaded from an HF folder (no random init).

    The model is built in ``dtype`` (default: the checkpoint's) and the HF weights loaded into it.
    """
    action = progress.action if progress is not None else "bridgectl"
    stage(action, "building the Megatron model")
    bridge = bridge_class.from_hf_pretrained(
        hf_model, trust_remote_code=trust_remote_code, torch_dtype=dtype, accept_config=accept_config
    )
    provider = parallel.apply(bridge.to_megatron_provider())
    provider.perform_initialization = False  # every parameter is filled and coverage-checked
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    timeline().mark("building the model")
    bridge.load_hf_weights(model, progress=progress)
    timeline().mark("reading weights")
    return bridge, provider, model


def import_checkpoint(
    bridge_class: type[AutoBridge],
    hf_model: str | Path,
    megatron_path: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    source: str | None = None,
    accept_config: Iterable[str] = (),
) -> Path:
    """HF folder -> Megatron-LM ``torch_dist`` checkpoint (run config, provenance, tokenizer)."""
    from bridge_core.checkpoints.megatron_checkpoint import save_megatron_checkpoint
    from bridge_core.checkpoints.output_dir import check_output_dir

    check_output_dir(megatron_path, overwrite, "--megatron-path")
    timeline().mark("loading libraries")
    where = f" (rank 0 of {parallel.world_size})" if parallel.world_size > 1 else ""
    progress = Progress("import", enabled=rank() == 0, unit="Megatron parameters", stage="reading weights" + where)
    accepted = sorted(set(accept_config))
    bridge, provider, model = build_from_hf(
        bridge_class, hf_model, parallel, dtype, trust_remote_code, progress, accepted
    )
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
            **({"accept_config": accepted} if accepted else {}),
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
    saved_dtype: torch.dtype | None = None  # the weights' dtype in the checkpoint (the model may differ)


def hf_config_folder(info: Any, workdir: Path) -> Path:
    """``workdir`` holding the HF config.json the checkpoint stored at import (``provenance.json``)."""
    config = info.provenance.get("hf_config")
    if not config:
        raise CheckpointError(
            f"{info.path / 'provenance.json'}: no stored HF config; pass --hf-model <reference HF folder>"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config, indent=2))
    return workdir


# Provider settings a reference may differ in without describing another model.
_NOT_MODEL_SETTINGS = frozenset({"params_dtype", "bf16", "fp16", "pipeline_dtype", "init_method_std"})


def check_reference(bridge: AutoBridge, saved: dict[str, Any], info: Any, hf_model: str | Path) -> None:
    """Refuse an ``--hf-model`` reference that does not describe the checkpoint.

    Its architecture must be the one the checkpoint was imported from (``provenance.json``), and its
    config must translate to the settings the checkpoint was built with: otherwise an export would
    be written under another architecture or with another model's config.
    """
    from bridge_core.errors import ConfigError

    where = f"--hf-model {hf_model}"
    stored = info.provenance.get("architecture")
    if isinstance(stored, str) and stored and stored != bridge.hf.architecture:
        raise ConfigError(
            f"{where}: is a {bridge.hf.architecture} but the checkpoint {info.path} holds a {stored}; "
            "pass the model it was imported from, or no --hf-model (the stored config is used)"
        )
    provider = bridge.bridge.provider_bridge(bridge.hf)  # the bridge's own translation (and key checks)
    translated = set(bridge.bridge.hf_config_to_provider_kwargs(bridge.hf.config))
    from bridge_core.checkpoints.checkpoint_format import saved_form

    differing = [
        f"{name} {getattr(provider, name)!r} (checkpoint: {saved[name]!r})"
        for name in sorted(translated & set(saved) - _NOT_MODEL_SETTINGS)
        if saved_form(name, getattr(provider, name)) != saved_form(name, saved[name])  # as run_config.json holds them
    ]
    if differing:
        raise ConfigError(
            f"{where}: does not describe the checkpoint {info.path}: {'; '.join(differing[:6])}; "
            "pass the model it was imported from, or no --hf-model (the stored config is used)"
        )


def checkpoint_bridge(
    bridge_class: type[AutoBridge],
    info: Any,
    hf_model: str | Path | None,
    trust_remote_code: bool = False,
    accept_config: Iterable[str] = (),
) -> tuple[AutoBridge, dict[str, Any]]:
    """The bridge of a loaded checkpoint's ``info`` (its stored HF config, or the ``hf_model`` reference,
    checked against it) and the provider settings that rebuild its model."""
    accept_config = {*accept_config, *info.accepted_config()}  # what the user accepted at import
    with tempfile.TemporaryDirectory(prefix="bridgectl-config-") as tmp:
        reference = hf_model if hf_model is not None else hf_config_folder(info, Path(tmp))
        bridge = bridge_class.from_hf_pretrained(
            reference, trust_remote_code=trust_remote_code, accept_config=accept_config
        )
        _ = bridge.hf.config  # read while the folder exists
    kwargs = info.provider_kwargs(bridge.bridge.PROVIDER_CLASS)
    if hf_model is not None:
        check_reference(bridge, kwargs, info, hf_model)
    return bridge, kwargs


def load_checkpoint(
    bridge_class: type[AutoBridge],
    megatron_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    accept_config: Iterable[str] = (),
) -> LoadedCheckpoint:
    """Build the model at ``parallel`` from a checkpoint's run config and load its weights (any TP/PP).

    ``dtype``: build the model in this dtype (e.g. fp32 for logit checks of a bf16 checkpoint) and
    load the stored weights into it; default: the dtype the checkpoint was saved in.
    """
    from bridge_core.checkpoints.megatron_checkpoint import load_megatron_checkpoint, load_weights_into
    from bridge_core.model.config_translation import dtype_settings

    info = load_megatron_checkpoint(megatron_path)
    bridge, kwargs = checkpoint_bridge(bridge_class, info, hf_model, trust_remote_code, accept_config)
    saved_dtype = kwargs.get("params_dtype", torch.float32)
    if dtype is not None:
        kwargs.update(dtype_settings(dtype))
    provider = parallel.apply(bridge.bridge.PROVIDER_CLASS(**kwargs))
    provider.perform_initialization = False
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    load_weights_into(model, info)
    side = folder_files(info.tokenizer_dir, info.path, "tokenizer file") if info.tokenizer_dir else []
    side = side if hf_model is None else bridge.hf.side_files()
    return LoadedCheckpoint(bridge, provider, model, info, side, saved_dtype)


def export_checkpoint(
    bridge_class: type[AutoBridge],
    megatron_path: str | Path,
    hf_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    accept_config: Iterable[str] = (),
    trust_remote_code: bool = False,
) -> Path | None:
    """Megatron checkpoint -> complete HF folder (weights, regenerated config, tokenizer, generation config)."""
    from bridge_core.checkpoints.output_dir import check_output_dir

    check_output_dir(hf_path, overwrite, "--hf-path")
    timeline().mark("loading libraries")
    stage("export", f"loading {megatron_path}")
    loaded = load_checkpoint(
        bridge_class,
        megatron_path,
        parallel,
        hf_model,
        trust_remote_code=trust_remote_code,
        accept_config=accept_config,
    )
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
