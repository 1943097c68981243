"""Megatron-Bridge's ``AutoBridge`` method names, as thin aliases over bridge-core's own calls.

Mixed into ``AutoBridge`` so that code written for Megatron-Bridge finds ``import_ckpt``,
``export_ckpt``, ``from_auto_config``, ``to_megatron_model``, ``save_megatron_model`` and
``load_megatron_model``. Each one forwards to the bridge-core function that does the work (named
in its docstring); arguments Megatron-Bridge has and bridge-core does not honour are refused by
name rather than silently ignored. The jobs run with the caller's own class (``cls``, ``type(self)``),
so this module imports neither ``auto_bridge`` nor ``workflows`` when it runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bridge_core.conversion import jobs
from bridge_core.errors import ConfigError

if TYPE_CHECKING:
    from bridge_core.conversion.auto_bridge import AutoBridge

# mp_overrides keys (Megatron-Bridge's ModelParallelKwargs) -> bridge-core's Parallelism fields
_MP_KEYS = {
    "tensor_model_parallel_size": "tp",
    "pipeline_model_parallel_size": "pp",
    "expert_model_parallel_size": "ep",
    "expert_tensor_parallel_size": "etp",
}


def _refuse(call: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ConfigError(f"AutoBridge.{call}: not supported by bridge-core: {', '.join(sorted(kwargs))}")


def _parallelism_of(model: list[Any]) -> Any:
    from bridge_core.runtime.chunks import unwrap
    from bridge_core.runtime.parallelism import Parallelism

    config = unwrap(model[0]).config
    return Parallelism(
        tp=config.tensor_model_parallel_size,
        pp=config.pipeline_model_parallel_size,
        ep=getattr(config, "expert_model_parallel_size", 1) or 1,
        etp=getattr(config, "expert_tensor_parallel_size", None),
    )


class MegatronBridgeNames:
    """The Megatron-Bridge spellings (see the module docstring); ``self`` is an ``AutoBridge`` (hence the
    ``cast``s, for the type checker only)."""

    @classmethod
    def import_ckpt(
        cls,
        hf_model_id: str | os.PathLike[str],
        megatron_path: str | os.PathLike[str],
        *,
        trust_remote_code: bool = False,
        torch_dtype: str | None = None,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        """HF model (folder, ``.gguf`` file or Hub ID) -> Megatron checkpoint, in this process at TP=PP=1.

        ``bridge_core.conversion.workflows.import_checkpoint`` (what ``bridgectl import`` runs).
        """
        _refuse("import_ckpt", kwargs)
        from bridge_core.checkpoints.hf_source import hf_source
        from bridge_core.runtime.parallelism import Parallelism

        with hf_source(str(hf_model_id), "import") as folder:
            jobs.import_checkpoint(
                cast("type[AutoBridge]", cls),
                folder,
                os.fspath(megatron_path),
                Parallelism(),
                torch_dtype,
                overwrite,
                trust_remote_code,
                source=str(hf_model_id),
            )

    def export_ckpt(
        self,
        megatron_path: str | os.PathLike[str],
        hf_path: str | os.PathLike[str],
        show_progress: bool = True,
        *,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        """Megatron checkpoint -> complete HF folder, in this process at TP=PP=1; this bridge's HF
        folder (if it has one) is the reference, else the config the checkpoint stored.

        ``bridge_core.conversion.workflows.export_checkpoint`` (what ``bridgectl export`` runs).
        """
        _refuse("export_ckpt", kwargs)
        from bridge_core.progress import progress_enabled, set_progress
        from bridge_core.runtime.parallelism import Parallelism

        bridge = cast("AutoBridge", self)
        hf = bridge.hf
        was = progress_enabled()
        set_progress(show_progress and was)
        try:
            jobs.export_checkpoint(
                type(bridge),
                os.fspath(megatron_path),
                os.fspath(hf_path),
                Parallelism(),
                hf.path,
                overwrite=overwrite,
                trust_remote_code=hf.trust_remote_code,
            )
        finally:
            set_progress(was)

    @classmethod
    def from_auto_config(
        cls,
        megatron_path: str | os.PathLike[str],
        hf_model_id: str | os.PathLike[str] | None = None,
        trust_remote_code: bool = False,
    ) -> Any:
        """A bridge for a Megatron checkpoint: from ``hf_model_id``'s config when given, else from the
        HF config the checkpoint stored at import (``AutoBridge.from_hf_config``)."""
        auto = cast("type[AutoBridge]", cls)
        if hf_model_id is not None:
            from bridge_core.checkpoints.hub import resolve_model_path

            return auto.from_hf_pretrained(resolve_model_path(str(hf_model_id)), trust_remote_code=trust_remote_code)
        from bridge_core.checkpoints.megatron_checkpoint import load_megatron_checkpoint

        info = load_megatron_checkpoint(megatron_path)
        with tempfile.TemporaryDirectory(prefix="bridgectl-config-") as tmp:
            folder = jobs.hf_config_folder(info, Path(tmp))
            bridge = auto.from_hf_pretrained(folder, trust_remote_code=trust_remote_code)
            config = bridge.hf.config  # read while the folder exists
        return auto.from_hf_config(config)

    def to_megatron_model(
        self, load_weights: bool = True, hf_path: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> list[Any]:
        """This rank's model chunks, built at the provider's default TP=PP=1 with the HF weights loaded
        (``to_megatron_provider(load_weights, hf_path)``, ``finalize()``, then
        ``provide_distributed_model(**kwargs)``; ``wrap_with_ddp`` defaults to False)."""
        provider = cast("AutoBridge", self).to_megatron_provider(load_weights=load_weights, hf_path=hf_path)
        provider.finalize()
        kwargs.setdefault("wrap_with_ddp", False)
        chunks: list[Any] = provider.provide_distributed_model(**kwargs)
        return chunks

    def save_megatron_model(
        self,
        model: list[Any],
        path: str | os.PathLike[str],
        hf_tokenizer_path: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write ``model`` as a Megatron-LM ``torch_dist`` checkpoint (every rank calls it), with the
        tokenizer files of ``hf_tokenizer_path`` (default: this bridge's HF folder) and provenance.

        ``bridge_core.checkpoints.megatron_checkpoint.save_megatron_checkpoint`` (what ``bridgectl import`` writes).
        """
        _refuse("save_megatron_model", kwargs)
        from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint
        from bridge_core.checkpoints.megatron_checkpoint import save_megatron_checkpoint
        from bridge_core.runtime.chunks import unwrap

        bridge = cast("AutoBridge", self)
        chunks = model if isinstance(model, (list, tuple)) else [model]
        parallel = _parallelism_of(list(chunks))
        if hf_tokenizer_path is not None:
            tokenizer_files = HFCheckpoint(Path(hf_tokenizer_path)).side_files()
        else:
            tokenizer_files = bridge.hf.side_files() if bridge.hf.path is not None else []
        source = str(bridge.hf.path) if bridge.hf.path is not None else "python"
        info = jobs.provenance(bridge, source, parallel)
        save_megatron_checkpoint(
            list(chunks),
            unwrap(chunks[0]).config,
            path,
            run_config={"command": "save_megatron_model", "parallelism": info["parallelism"]},
            provenance=info,
            tokenizer_files=tokenizer_files,
            overwrite=overwrite,
        )

    def load_megatron_model(
        self, path: str | os.PathLike[str], *, mp_overrides: dict[str, Any] | None = None, wrap_with_ddp: bool = False
    ) -> list[Any]:
        """This rank's model chunks loaded from a Megatron checkpoint at any TP/PP (``mp_overrides``:
        ``tensor_model_parallel_size``, ``pipeline_model_parallel_size``, ``expert_model_parallel_size``,
        ``expert_tensor_parallel_size``; default 1). ``bridge_core.conversion.workflows.load_checkpoint``.
        """
        from bridge_core.runtime.parallelism import Parallelism

        if wrap_with_ddp:
            raise ConfigError("AutoBridge.load_megatron_model: wrap_with_ddp=True is not supported by bridge-core")
        unknown = set(mp_overrides or {}) - set(_MP_KEYS)
        if unknown:
            raise ConfigError(
                f"AutoBridge.load_megatron_model: unknown mp_overrides keys: {', '.join(sorted(unknown))}"
            )
        sizes = {_MP_KEYS[k]: v for k, v in (mp_overrides or {}).items() if v is not None}
        bridge = cast("AutoBridge", self)
        hf = bridge.hf
        loaded = jobs.load_checkpoint(
            type(bridge), os.fspath(path), Parallelism(**sizes), hf.path, trust_remote_code=hf.trust_remote_code
        )
        return loaded.model
