"""``AutoBridge``: the Python entry point, shaped like Megatron-Bridge's.

bridge = AutoBridge.from_hf_pretrained("path/to/hf")
provider = bridge.to_megatron_provider()
provider.tensor_model_parallel_size = 2
provider.finalize()
model = provider.provide_distributed_model(wrap_with_ddp=False)
bridge.load_hf_weights(model)
for name, tensor in bridge.export_hf_weights(model, cpu=True): ...
bridge.save_hf_pretrained(model, "out/")
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint, architecture_of, read_config_json
from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter
from bridge_core.checkpoints.output_dir import atomic_output_dir, check_output_dir
from bridge_core.conversion import weight_sync
from bridge_core.conversion.export import export_tasks, gather_plan
from bridge_core.conversion.export_cache import cached_export
from bridge_core.conversion.groups import ParallelLayout, all_gather_objects
from bridge_core.conversion.host_copy import to_host
from bridge_core.conversion.import_plan import ImportPlan
from bridge_core.conversion.load import LoadReport, load_tasks
from bridge_core.conversion.megatron_bridge_names import MegatronBridgeNames
from bridge_core.conversion.params import collect_params
from bridge_core.conversion.tasks import Task, build_tasks
from bridge_core.conversion.weight_sync import WeightSyncPlan
from bridge_core.errors import ConfigError
from bridge_core.model.config_translation import (
    dtype_name,
    dtype_settings,
    hf_dtype,
    parse_dtype,
    write_both_rope_spellings,
)
from bridge_core.plugins.discovery import get_registry
from bridge_core.runtime.chunks import unwrap
from bridge_core.runtime.parallelism import rank

# Keys of the source config.json that are regenerated or must not be carried over.
_DROPPED_KEYS = (
    "quantization_config",
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
)


def _chunks(model: Any) -> list[torch.nn.Module]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def _ignored(method: str, argument: str, instead: str) -> None:
    message = f"AutoBridge.{method}: {argument} is ignored ({instead}) and goes in bridge-core 2.0"
    warnings.warn(message, DeprecationWarning, stacklevel=3)


class AutoBridge(MegatronBridgeNames):
    """Picks the installed plugin's bridge for an HF model and runs conversions through it.

    Megatron-Bridge's names (``import_ckpt``, ``export_ckpt``, ...) come from ``MegatronBridgeNames``.
    """

    def __init__(
        self,
        hf: HFCheckpoint,
        torch_dtype: str | torch.dtype | None = None,
        accept_config: Iterable[str] = (),
    ):
        registry = get_registry()
        self.hf = hf
        self.registration = registry.bridge_for(hf.architecture)
        self.bridge = registry.create_bridge(hf.architecture, hf.config)
        self.bridge.accepted_hf_config = frozenset(accept_config)
        self.torch_dtype = parse_dtype(torch_dtype) if torch_dtype is not None else None
        self._export_token = object()  # renewed whenever an import may change the HF layout (export_cache)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_hf_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        trust_remote_code: bool = False,
        torch_dtype: str | torch.dtype | None = None,
        accept_config: Iterable[str] = (),
    ) -> AutoBridge:
        """A bridge for a local HF model folder (config.json + safetensors).

        ``accept_config``: config keys the bridge would refuse that you know do not change this
        model's outputs (the error names them; see docs/conversion.md#config-translation).
        """
        hf = HFCheckpoint(path, trust_remote_code=trust_remote_code)
        return cls(hf, torch_dtype=torch_dtype, accept_config=accept_config)

    @classmethod
    def from_hf_config(
        cls, config: Any, *, torch_dtype: str | torch.dtype | None = None, accept_config: Iterable[str] = ()
    ) -> AutoBridge:
        """A bridge for an HF config alone (build models; no weights to load)."""
        return cls(HFCheckpoint.from_config(config), torch_dtype=torch_dtype, accept_config=accept_config)

    @classmethod
    def list_supported_models(cls) -> list[str]:
        """The architectures the installed plugins serve."""
        return get_registry().supported_architectures()

    @classmethod
    def can_handle(cls, path: str | os.PathLike[str], trust_remote_code: bool | None = None) -> bool:
        """True when ``path`` is an HF folder whose architecture an installed plugin serves (reads only
        config.json). ``trust_remote_code`` changes nothing: deprecated, it goes in 2.0."""
        if trust_remote_code is not None:
            _ignored("can_handle", "trust_remote_code", "only config.json is read")
        try:
            arch = architecture_of(read_config_json(Path(path)), str(path))
        except Exception:
            return False
        return arch in get_registry().bridges

    @property
    def hf_config(self) -> Any:
        return self.hf.config

    @property
    def owner(self) -> str:
        r = self.registration
        return f"{type(self.bridge).__name__} ({r.distribution} {r.version})"

    # -- provider -------------------------------------------------------------------------------
    def to_megatron_provider(self, load_weights: bool = False, hf_path: str | os.PathLike[str] | None = None) -> Any:
        """The provider for this model. ``load_weights=True`` loads the HF weights while the model is
        built (random initialisation is then skipped: every parameter is coverage-checked instead)."""
        provider = self.bridge.provider_bridge(self.hf)
        if self.torch_dtype is not None:
            for name, value in dtype_settings(self.torch_dtype).items():
                setattr(provider, name, value)
        if load_weights:
            provider.perform_initialization = False
            original = provider.provide_distributed_model

            def provide_loaded(*args: Any, **kwargs: Any) -> Any:
                hooks = kwargs.pop("pre_wrap_hook", None)
                hooks = hooks if isinstance(hooks, list) else [hooks] if hooks else []
                kwargs["pre_wrap_hook"] = [lambda chunks: (self.load_hf_weights(chunks, hf_path), chunks)[1], *hooks]
                return original(*args, **kwargs)

            provider.provide_distributed_model = provide_loaded
        return provider

    @property
    def transformer_config(self) -> Any:
        return self.to_megatron_provider().finalize()

    # -- planning -------------------------------------------------------------------------------
    def _tasks(self, model: Any, hf_names: Iterable[str] | None = None) -> tuple[list[Task], ParallelLayout, Any]:
        chunks = _chunks(model)
        layout = ParallelLayout()
        params = collect_params(chunks, layout.tp.size, layout.etp.size, layout.ep_rank)
        tied = bool(getattr(unwrap(chunks[0]), "share_embeddings_and_output_weights", False))
        config = unwrap(chunks[0]).config
        if hf_names is not None:
            self._export_token = object()
        self.bridge.select_hf_layout(config, None if hf_names is None else frozenset(hf_names))
        tasks = build_tasks(params, self.bridge.mapping_registry(), tied=tied, owner=self.owner)
        return tasks, layout, config

    # -- import ---------------------------------------------------------------------------------
    def load_hf_weights(
        self,
        model: Any,
        hf_path: str | os.PathLike[str] | None = None,
        allow_unmapped: Iterable[str] = (),
        progress: Any = None,
    ) -> LoadReport:
        """Fill every parameter of this rank's model chunks from the HF checkpoint.

        Refuses (before reading any weight: ``ImportPlan.check``) quantized sources the bridge does not
        dequantize, shape mismatches, and any HF tensor or Megatron parameter left unmapped, missing or
        used twice. Every rank's reads are gathered first (one collective), then every rank checks.
        """
        source = HFCheckpoint(hf_path).weights if hf_path is not None else self.hf.weights
        tasks, layout, config = self._tasks(model, source.meta)
        plan = ImportPlan.build(
            tasks,
            source.meta,
            config,
            self.bridge.hf_config,
            owner=self.owner,
            dequantizes=self.bridge.dequantizes_hf_weights,
            allow_unused=allow_unmapped,
        )
        plan.check(c for rank in all_gather_objects(plan.consumption()) for c in rank)
        return load_tasks(tasks, self.bridge, source, config, layout, hf_dtype(self.bridge.hf_config), progress)

    def load_hf_adapter(self, model: Any, adapter_path: str | os.PathLike[str]) -> Any:
        """Load an HF PEFT (LoRA/DoRA) adapter folder into ``model`` (every rank; adapters are added and the
        base frozen if the model has none); returns its ``PeftConfig``. See ``bridge_core.peft.load``."""
        from bridge_core.peft.load import load_hf_adapter

        return load_hf_adapter(self, model, adapter_path)

    # -- export ---------------------------------------------------------------------------------
    def export_hf_weights(
        self,
        model: Any,
        cpu: bool = True,
        show_progress: bool | None = None,
        to_rank: int | None = None,
        dtype: str | torch.dtype | None = None,
        progress: Any = None,
        on_plan: Callable[[list[tuple[str, tuple[int, ...], torch.dtype]]], None] | None = None,
        plan: WeightSyncPlan | None = None,
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(hf_name, tensor)`` for the whole model (every rank takes part).

        ``to_rank=None``: every rank receives every tensor (e.g. weight sync); an int: only that rank.
        Padded vocabulary rows are trimmed; a tied output layer is not emitted twice. ``on_plan``, if
        given, is called on the receiving rank(s) before the first tensor with ``(hf_name, shape,
        dtype)`` of every tensor to come, in order (``ShardedSafetensorsWriter.plan`` takes it).
        ``plan``: a ``weight_sync_plan`` of this model; nothing is planned again and nothing is
        communicated before the first tensor (a plan of another model or layout is refused). Without
        one, the first export of a model plans it and the next ones reuse that while the model's
        parameters (objects, shapes, dtypes, devices) and parallel layout stay the same (with several
        ranks, after one small collective that checks every rank's).

        The tensors are **views of the live parameters** wherever no copy is needed: with ``cpu=False``
        on a GPU model, and for a model on the CPU (even with ``cpu=True``), an unsplit tensor in the
        model's dtype (and a piece of a fused one, e.g. ``gate_proj`` of ``linear_fc1``) shares the
        parameter's storage. Clone what you keep past the next optimizer step or change in place.

        ``show_progress`` changes nothing (pass ``progress``): deprecated, it goes in 2.0.
        """
        if show_progress is not None:
            _ignored("export_hf_weights", "show_progress", "pass progress= for a progress bar")
        if plan is not None:
            tasks, layout, config = plan.bind(model, lambda: self._tasks(model))
            if dtype is not None and parse_dtype(dtype) != plan.dtype:
                raise ConfigError(f"dtype: the plan exports {plan.dtype}, not {parse_dtype(dtype)}; make another plan")
            want, export = plan.dtype, plan.export
        else:
            chunks = _chunks(model)
            # Default: the model's dtype for every tensor (torch norms of the local spec keep fp32 weights).
            want = parse_dtype(dtype) if dtype is not None else unwrap(chunks[0]).config.params_dtype
            # Planned once per model: reused while its parameters and layout stay (conversion/export_cache.py).
            build = lambda: self._tasks(model)  # noqa: E731
            tasks, layout, config, export = cached_export(chunks, self._export_token, want, self.hf_config, build)
        device = tasks[0].param.tensor.device if tasks else torch.device("cpu")
        tensors = export_tasks(
            tasks,
            self.bridge,
            config,
            layout,
            to_rank=to_rank,
            dtype=want,
            device=device,
            progress=progress,
            on_plan=on_plan,
            plan=export,
        )
        # cpu=True: pinned, overlapped device-to-host copies (see conversion/host_copy.py).
        yield from to_host(tensors) if cpu else tensors

    def weight_sync_plan(
        self, model: Any, bucket_bytes: int = 512 << 20, dtype: str | torch.dtype | None = None
    ) -> WeightSyncPlan:
        """The plan of every refit of ``model`` (every rank calls it; one collective): HF names,
        shapes and dtypes in export order, which ranks hold which slice of each HF tensor, buckets of
        at most ``bucket_bytes`` and the export dtype (default: the model's). Pass it to
        ``export_hf_weights(model, plan=...)`` or ``export_weight_buckets``. See docs/python-api.md."""
        tasks, layout, config = self._tasks(model)
        want = parse_dtype(dtype) if dtype is not None else config.params_dtype
        hf = self.bridge.hf_config
        extra = (weight_sync.local_shards(tasks, layout, config, hf), weight_sync.signature(tasks, layout))
        export, per_rank = gather_plan(tasks, layout, config, hf, want, extra)
        plan = WeightSyncPlan.build(export, want, bucket_bytes, per_rank)
        plan.remember(model, tasks, layout, config)
        return plan

    def export_weight_buckets(
        self, model: Any, plan: WeightSyncPlan, cpu: bool = False
    ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Every rank receives ``plan.buckets`` in order, one list of ``(hf_name, tensor)`` at a time
        (on the model's device unless ``cpu``): extra memory about one bucket plus the largest tensor.
        The tensors may be views of the live parameters (see ``export_hf_weights``)."""
        yield from plan.bucketed(self.export_hf_weights(model, cpu=cpu, plan=plan))

    def hf_config_for_export(self, provider: Any, dtype: torch.dtype | None = None) -> Any:
        """The HF config regenerated from ``provider`` through the bridge (not copied from the source).

        Keys the bridge does not translate (token ids, supported constant settings) come from the
        source config.json; ``quantization_config`` is dropped.
        """
        from transformers import AutoConfig

        values = {k: v for k, v in self.hf.config_dict.items() if k not in _DROPPED_KEYS}
        values.update(self.bridge.megatron_to_hf_config(provider))
        values["architectures"] = [self.hf.architecture]
        if dtype is not None:
            values["dtype"] = dtype_name(dtype)
        model_type = values.pop("model_type", None) or getattr(self.hf.config, "model_type", None)
        if not model_type:
            raise ConfigError("cannot regenerate config.json: the source config has no model_type")
        return AutoConfig.for_model(model_type, **values)

    def save_hf_pretrained(
        self,
        model: Any,
        path: str | os.PathLike[str],
        max_shard_size: str | int = "5GB",
        overwrite: bool = False,
        dtype: str | torch.dtype | None = None,
        progress: Any = None,
        side_files: Iterable[Path] | None = None,
    ) -> Path | None:
        """Write a complete HF folder (rank 0 writes; every rank takes part).

        Sharded safetensors + ``model.safetensors.index.json``, a regenerated config.json, and the
        tokenizer and generation-config files (``side_files``, default: the source folder's). The
        shards are laid out from the export plan and each tensor is written as it arrives (no shard is
        held in memory). Everything is written into a temporary sibling, fsynced, and renamed at the
        end, so an interrupted save never leaves a complete-looking folder.
        """
        path = check_output_dir(path, overwrite)
        want = parse_dtype(dtype) if dtype is not None else None
        if rank() != 0:
            for _ in self.export_hf_weights(model, cpu=True, to_rank=0, dtype=want, progress=progress):
                pass
            return None
        provider = unwrap(_chunks(model)[0]).config
        with atomic_output_dir(path, overwrite) as tmp, ShardedSafetensorsWriter(tmp, max_shard_size) as writer:
            weights = self.export_hf_weights(
                model, cpu=True, to_rank=0, dtype=want, progress=progress, on_plan=writer.plan
            )
            for name, tensor in weights:
                writer.add(name, tensor)
            writer.finish()
            self.hf_config_for_export(provider, want or provider.params_dtype).save_pretrained(tmp)
            write_both_rope_spellings(tmp / "config.json")  # transformers 4.5x reads only the old one
            for side in self.hf.side_files() if side_files is None else side_files:
                shutil.copy2(side, tmp / side.name)
        return path  # atomic_output_dir fsynced every file before the rename
