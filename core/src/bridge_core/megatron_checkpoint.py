"""Megatron-LM ``torch_dist`` checkpoints: save model chunks, read the folder back, load at any TP/PP.

Layout written by ``save_megatron_checkpoint`` (see docs/megatron-checkpoints.md)::

    <path>/latest_checkpointed_iteration.txt   "0"
    <path>/iter_0000000/                       dist-checkpointing files (.metadata, __*.distcp, common.pt,
                                               metadata.json); common.pt holds args, iteration, version
    <path>/run_config.json                     the provider's settings as plain JSON
    <path>/provenance.json                     where the weights came from
    <path>/tokenizer/                          tokenizer files

Saving uses a synchronous writer (no helper processes). Loading reads ``.metadata`` with a
restricted unpickler and stored objects with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace, nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch_strategies
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME, TorchCommonLoadStrategy
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreLoadPlanner,
    MCoreSavePlanner,
    TorchDistLoadShardedStrategy,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from bridge_core.conversion.params import unwrap
from bridge_core.errors import CheckpointError
from bridge_core.output_dir import atomic_output_dir
from bridge_core.safe_pickle import load_weights_only, read_dcp_metadata

TRACKER = "latest_checkpointed_iteration.txt"
ITERATION = 0
ITER_DIR = f"iter_{ITERATION:07d}"
RUN_CONFIG = "run_config.json"
PROVENANCE = "provenance.json"
TOKENIZER_DIR = "tokenizer"
FORMAT_VERSION = 1
# What Megatron-LM saves as content metadata (no optimizer here, so no distrib_optim_sharding_type).
CONTENT_METADATA = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}


def _activations() -> dict[str, Any]:
    from megatron.core import activations

    extra = {n: getattr(activations, n) for n in ("squared_relu", "quick_gelu", "fast_gelu") if hasattr(activations, n)}
    return {**_ACTIVATIONS, **extra}


# -- run_config.json ----------------------------------------------------------------------------


def _activation_name(func: Any) -> str | None:
    for name, known in _activations().items():
        if func is known:
            return name
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _json_value(value: Any) -> tuple[bool, Any]:
    if isinstance(value, torch.dtype):
        return True, str(value)  # "torch.bfloat16"
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False, None
    return True, value


def provider_settings(provider: Any) -> tuple[dict[str, Any], list[str]]:
    """The provider's dataclass fields as plain JSON values, and the names of fields left out.

    dtypes become ``"torch.<name>"``, ``activation_func`` its name; ``padded_vocab_size`` is pinned to
    the padded size the model was built with, so a model rebuilt at another TP size has the same
    embedding shape. Fields that are not JSON (init methods, enums, a ``ModuleSpec``) are left out.
    """
    settings, omitted = {}, []
    for field in (f for f in dataclasses.fields(provider) if f.init):
        value = getattr(provider, field.name)
        if field.name == "activation_func":
            ok, value = value is not None, _activation_name(value)
        else:
            ok, value = _json_value(value)
        if ok:
            settings[field.name] = value
        else:
            omitted.append(field.name)
    settings["padded_vocab_size"] = provider.vocab_size_with_padding
    return settings, omitted


# Settings that describe the machine or run that saved the checkpoint, not the model: dropped on
# rebuild so that ``finalize()`` derives them again where the checkpoint is loaded.
MACHINE_SETTINGS = frozenset(
    {
        "use_cpu_initialization",
        "perform_initialization",
        "masked_softmax_fusion",
        "gradient_accumulation_fusion",
        "persist_layer_norm",
        "bias_activation_fusion",
        "bias_dropout_fusion",
        "apply_rope_fusion",
    }
)


def provider_kwargs_from_run_config(run_config: dict) -> dict[str, Any]:
    """Keyword arguments that rebuild the saved provider from ``run_config.json`` alone.

    ``GPTModelProvider(**kwargs)`` (or the class named in ``run_config["provider_class"]``) gives the
    saved model; set the parallel sizes for the new run on it before ``finalize()``. Machine-local
    settings (CPU initialisation, CUDA fusions) are left out and derived again by ``finalize()``.
    """
    settings = run_config.get("provider") if isinstance(run_config, dict) else None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{RUN_CONFIG}: has no 'provider' section with the model settings")
    kwargs = {}
    for name, value in settings.items():
        if name in MACHINE_SETTINGS:
            continue
        if isinstance(value, str) and value.startswith("torch."):
            dtype = getattr(torch, value.removeprefix("torch."), None)
            value = dtype if isinstance(dtype, torch.dtype) else value
        kwargs[name] = value
    if "activation_func" in kwargs:
        name, known = kwargs["activation_func"], _activations()
        if name not in known:
            raise CheckpointError(
                f"{RUN_CONFIG}: activation_func {name!r} cannot be restored; known: {', '.join(sorted(known))}"
            )
        kwargs["activation_func"] = known[name]
    return kwargs


def _run_config_document(provider: Any, run_config: dict, world_size: int) -> dict[str, Any]:
    settings, omitted = provider_settings(provider)
    cls = type(provider)
    return {
        "format": "bridge-core megatron checkpoint",
        "format_version": FORMAT_VERSION,
        "iteration_dir": ITER_DIR,
        "ckpt_format": "torch_dist",
        "saved_at_world_size": world_size,
        "versions": _versions(),
        "provider_class": f"{cls.__module__}.{cls.__qualname__}",
        "provider": settings,
        "omitted_provider_fields": omitted,
        "run": run_config,
    }


def _versions() -> dict[str, str]:
    from megatron.core import package_info

    from bridge_core import __version__

    return {"bridge_core": __version__, "megatron_core": package_info.__version__, "torch": torch.__version__}


# -- Megatron-LM args ---------------------------------------------------------------------------


# Megatron-LM args that carry the provider attribute of the same name.
_ARGS_AS_IS = """num_layers hidden_size ffn_hidden_size num_attention_heads kv_channels seq_length vocab_size
    make_vocab_size_divisible_by position_embedding_type rotary_base rotary_percent rotary_interleaved
    rope_scaling_factor normalization add_bias_linear add_qkv_bias qk_layernorm apply_query_key_layer_scaling
    attention_dropout hidden_dropout init_method_std params_dtype moe_router_topk moe_shared_expert_intermediate_size
    moe_layer_freq moe_router_pre_softmax moe_router_score_function moe_router_topk_scaling_factor
    moe_router_enable_expert_bias moe_router_load_balancing_type moe_aux_loss_coeff moe_grouped_gemm
    tensor_model_parallel_size pipeline_model_parallel_size virtual_pipeline_model_parallel_size
    expert_model_parallel_size expert_tensor_parallel_size context_parallel_size""".split()
# Megatron-LM arg -> provider attribute.
_ARGS_RENAMED = {
    "max_position_embeddings": "seq_length",
    "use_rope_scaling": "rope_scaling",
    "norm_epsilon": "layernorm_epsilon",
    "apply_layernorm_1p": "layernorm_zero_centered_gamma",
    "num_experts": "num_moe_experts",
}


def megatron_args(provider: Any, world_size: int = 1, tokenizer: bool = False) -> argparse.Namespace:
    """The ``args`` Namespace Megatron-LM reads from a checkpoint (``--use-checkpoint-args`` and checks).

    ``no_save_optim``/``no_save_rng`` tell Megatron-LM's loader not to ask the checkpoint for
    optimizer or RNG state. Only plain values, so ``common.pt`` loads with ``weights_only=True``.
    """
    p = provider
    args = {name: getattr(p, name) for name in _ARGS_AS_IS}
    args.update({name: getattr(p, attr) for name, attr in _ARGS_RENAMED.items()})
    groups = p.num_query_groups or p.num_attention_heads
    act = _activation_name(p.activation_func)
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    args.update(
        num_query_groups=groups,
        group_query_attention=groups != p.num_attention_heads,
        padded_vocab_size=p.vocab_size_with_padding,
        add_position_embedding=p.position_embedding_type == "learned_absolute",
        use_rotary_position_embeddings=p.position_embedding_type == "rope",
        swiglu=bool(p.gated_linear_unit) and act == "silu",
        squared_relu=not p.gated_linear_unit and act == "squared_relu",
        untie_embeddings_and_output_weights=not p.share_embeddings_and_output_weights,
        moe_ffn_hidden_size=p.moe_ffn_hidden_size if p.num_moe_experts else None,
        bf16=p.params_dtype == torch.bfloat16,
        fp16=p.params_dtype == torch.float16,
        transformer_impl="transformer_engine" if p.uses_transformer_engine() else "local",
        tokenizer_type="HuggingFaceTokenizer" if tokenizer else None,
        tokenizer_model=None,
        world_size=world_size,
        data_parallel_size=world_size // model_parallel,
        # a weights-only checkpoint
        ckpt_format="torch_dist",
        use_dist_ckpt=True,
        no_save_optim=True,
        no_save_rng=True,
        iteration=ITERATION,
        consumed_train_samples=0,
        skipped_train_samples=0,
        consumed_valid_samples=0,
    )
    return argparse.Namespace(**args)


# -- ranks --------------------------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _from_rank0(value: Any) -> Any:
    if _world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_ok(ok: bool) -> bool:
    if _world() == 1:
        return ok
    flags: list[Any] = [None] * _world()
    dist.all_gather_object(flags, ok)
    return all(flags)


@contextlib.contextmanager
def _shared_atomic_dir(path: Path, overwrite: bool, prepare: Any) -> Iterator[Path]:
    """``atomic_output_dir`` for all ranks: rank 0 makes the temporary folder and tells the others.

    ``prepare(tmp)`` runs on rank 0 first (checks; may raise ``CheckpointError``), and its error is
    raised on every rank. The folder is renamed into place only if the body succeeded on every rank,
    and every rank returns only once it is in place (or raises if rank 0 could not move it).
    """
    body_ok = False
    try:
        with contextlib.ExitStack() as stack:
            tmp, error = None, None
            if _rank() == 0:
                try:
                    tmp = stack.enter_context(atomic_output_dir(path, overwrite, what="Megatron checkpoint folder"))
                    prepare(tmp)
                except Exception as exc:
                    error = str(exc) if isinstance(exc, CheckpointError) else f"{path}: cannot write it: {exc}"
            tmp, error = _from_rank0((tmp and str(tmp), error))
            if error:
                raise CheckpointError(error)  # inside the stack: rank 0's temporary folder is removed
            failure = None
            try:
                yield Path(tmp)
            except BaseException as exc:
                failure = exc
            if not _all_ok(failure is None):
                raise failure or CheckpointError(f"{path}: the save failed on another rank; nothing was written")
            body_ok = True
        moved = None  # rank 0 renamed the folder into place when leaving the stack
    except BaseException as exc:
        if not body_ok:
            raise
        moved = exc
    if not _all_ok(moved is None):
        raise moved or CheckpointError(f"{path}: rank 0 could not move the finished checkpoint into place")


# -- save ---------------------------------------------------------------------------------------


class _SyncSaveStrategy(TorchDistSaveShardedStrategy):
    """The torch_dist format written in this process (the default strategy spawns writer processes).

    Two writer threads per rank (megatron-core's own default for torch_dist): each rank writes two
    files, ``__<rank>_0.distcp`` and ``__<rank>_1.distcp``, which torch's reader and Megatron-LM read
    like one. torch DCP fsyncs every file before the save returns.
    """

    def __init__(self) -> None:
        super().__init__("torch_dist", 1, thread_count=2)

    def save(self, sharded_state_dict: Any, checkpoint_dir: str | Path) -> None:
        state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        torch.distributed.checkpoint.save(
            mcore_to_pyt_state_dict(state, False),
            storage_writer=FileSystemWriter(checkpoint_dir, thread_count=self.thread_count),
            planner=MCoreSavePlanner(
                dedup_replicated_tensors=not self.keep_only_main_replica, flatten_state_dict=False
            ),
        )


def _chunks(model_chunks: Any) -> list[torch.nn.Module]:
    chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    return [unwrap(c) for c in chunks]


def _model_keys(n: int) -> list[str]:
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]


def _json_text(document: Any, file: Path) -> str:
    try:
        return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: cannot write it as JSON: {exc}") from exc


def save_megatron_checkpoint(
    model_chunks: Any,
    provider: Any,
    path: str | os.PathLike,
    *,
    run_config: dict,
    provenance: dict,
    tokenizer_files: list[Path],
    overwrite: bool = False,
) -> Path:
    """Write this model as a Megatron-LM ``torch_dist`` checkpoint at ``path`` (every rank calls it).

    Each rank writes its shards of ``{"model": chunk.sharded_state_dict()}`` (``model0``, ``model1``,
    ... for virtual pipeline chunks) into ``iter_0000000/``; rank 0 writes the common state, the
    tracker, ``run_config.json`` (provider settings plus ``run_config`` under ``"run"``),
    ``provenance.json`` and ``tokenizer/``. Everything goes into a temporary sibling that is renamed
    into place at the end, so an interrupted save leaves no complete-looking folder.
    """
    path = Path(path)
    chunks = _chunks(model_chunks)
    tokenizer_files = [Path(f) for f in tokenizer_files]
    documents: dict[str, str] = {}

    def prepare(tmp: Path) -> None:  # rank 0, before any shard is written
        names = [f.name for f in tokenizer_files]
        for file in tokenizer_files:
            if not file.is_file():
                raise CheckpointError(f"{file}: tokenizer file does not exist")
        if len(set(names)) != len(names):
            raise CheckpointError(f"{path / TOKENIZER_DIR}: two tokenizer files have the same name: {names}")
        document = _run_config_document(provider, run_config, _world())
        documents[RUN_CONFIG] = _json_text(document, path / RUN_CONFIG)
        documents[PROVENANCE] = _json_text(provenance, path / PROVENANCE)
        (tmp / ITER_DIR).mkdir()

    with _shared_atomic_dir(path, overwrite, prepare) as tmp:
        state: dict[str, Any] = {
            key: chunk.sharded_state_dict(metadata=dict(CONTENT_METADATA))
            for key, chunk in zip(_model_keys(len(chunks)), chunks)
        }
        state.update(
            checkpoint_version=3.0,
            iteration=ITERATION,
            args=megatron_args(provider, _world(), tokenizer=bool(tokenizer_files)),
            num_floating_point_operations_so_far=0,
        )
        dist_checkpointing.save(
            state, str(tmp / ITER_DIR), sharded_strategy=_SyncSaveStrategy(), content_metadata=dict(CONTENT_METADATA)
        )
        if _rank() == 0:
            if tokenizer_files:
                (tmp / TOKENIZER_DIR).mkdir()
            for file in tokenizer_files:
                shutil.copy2(file, tmp / TOKENIZER_DIR / file.name)
            for name, text in documents.items():
                (tmp / name).write_text(text)
            (tmp / TRACKER).write_text(str(ITERATION))
    return path


# -- read ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """A checked checkpoint folder: where its weights are and what was saved with them."""

    path: Path
    iteration: int | None  # None for a "release" checkpoint
    weights_dir: Path
    run_config: dict
    provenance: dict
    tokenizer_dir: Path | None

    def provider_kwargs(self) -> dict[str, Any]:
        """``provider_kwargs_from_run_config(self.run_config)``."""
        return provider_kwargs_from_run_config(self.run_config)


def _read_json(file: Path, required: bool) -> dict:
    if not file.is_file():
        if required:
            raise CheckpointError(f"{file}: missing; it holds the settings needed to rebuild the model")
        return {}
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found {type(value).__name__}")
    return value


def load_megatron_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Check a checkpoint folder and read its tracker, ``run_config.json`` and ``provenance.json``.

    Reads no weights. Raises a one-line ``CheckpointError`` naming the missing or bad file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: Megatron checkpoint folder does not exist")
    tracker = path / TRACKER
    if not tracker.is_file():
        raise CheckpointError(f"{tracker}: missing; {path} is not a Megatron-LM checkpoint folder")
    text = tracker.read_text().strip()
    if text == "release":
        iteration, weights = None, path / "release"
    elif text.isdigit():
        iteration, weights = int(text), path / f"iter_{int(text):07d}"
    else:
        raise CheckpointError(f"{tracker}: expected an iteration number or 'release', found {text[:40]!r}")
    if not weights.is_dir():
        raise CheckpointError(f"{weights}: missing, but {tracker} names it")
    if not (weights / "metadata.json").is_file():
        raise CheckpointError(f"{weights}: not a complete torch_dist checkpoint (no metadata.json)")
    run_config = _read_json(path / RUN_CONFIG, required=True)
    version = run_config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path / RUN_CONFIG}: format_version {version!r} is newer than this bridge-core reads")
    tokenizer = path / TOKENIZER_DIR
    return CheckpointInfo(
        path=path,
        iteration=iteration,
        weights_dir=weights,
        run_config=run_config,
        provenance=_read_json(path / PROVENANCE, required=False),
        tokenizer_dir=tokenizer if tokenizer.is_dir() else None,
    )


# -- load ---------------------------------------------------------------------------------------


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.metadata import StorageMeta

        metadata = read_dcp_metadata(Path(self.path) / ".metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeLoadPlanner(MCoreLoadPlanner):
    def load_bytes(self, read_item: Any, value: Any) -> None:
        obj = load_weights_only(value)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._traverse import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class _SafeLoadStrategy(TorchDistLoadShardedStrategy):
    """megatron's torch_dist loader with the restricted ``.metadata`` reader and weights-only objects."""

    def load(self, sharded_state_dict: Any, checkpoint_dir: Any) -> Any:
        module, saved = mcore_torch_strategies, {}
        patches = {
            "_get_filesystem_reader": lambda checkpoint_dir, cache_metadata=False: _SafeReader(checkpoint_dir),
            "MCoreLoadPlanner": _SafeLoadPlanner,
        }
        for name, value in patches.items():
            saved[name] = getattr(module, name)
            setattr(module, name, value)
        try:
            with warnings.catch_warnings():  # torch's notice that its ShardedTensor (used inside) is deprecated
                warnings.filterwarnings("ignore", "Please use DTensor", FutureWarning)
                return super().load(sharded_state_dict, checkpoint_dir)
        finally:
            for name, value in saved.items():
                setattr(module, name, value)


class _SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    def load_common(self, checkpoint_dir: str | Path) -> Any:
        return _load_common(Path(checkpoint_dir))


def _load_common(weights: Path) -> dict:
    file = weights / COMMON_STATE_FNAME
    try:
        with open(file, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except Exception as exc:
        raise CheckpointError(f"{file}: refused to load: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, CheckpointException) and exc.failures:
        exc = next(iter(exc.failures.values()))[0]
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, CheckpointError):
        return text
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_vocab(chunks: list[torch.nn.Module], info: CheckpointInfo) -> None:
    # dist-checkpointing pads or truncates embedding rows to the model's size; truncating real tokens is refused.
    saved = info.run_config.get("provider", {})
    tokens, rows = saved.get("vocab_size"), getattr(chunks[0], "vocab_size", None)
    if isinstance(tokens, int) and isinstance(rows, int) and rows < tokens:
        raise CheckpointError(
            f"{info.path / RUN_CONFIG}: the checkpoint has {tokens} tokens but the model only {rows} vocabulary rows; "
            f"build it with padded_vocab_size={saved.get('padded_vocab_size')} (provider_kwargs_from_run_config)"
        )


def _aliases_whole(leaves: list[Any], target: torch.Tensor) -> bool:
    """True when ``leaves`` are contiguous views of ``target``'s memory that tile it exactly."""
    if not target.is_contiguous() or not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        return False
    storage = target.untyped_storage().data_ptr()
    spans = []
    for t in leaves:
        if t.device != target.device or t.dtype != target.dtype or not t.is_contiguous():
            return False
        if t.untyped_storage().data_ptr() != storage:
            return False
        spans.append((t.data_ptr(), t.data_ptr() + t.nbytes))
    position = target.data_ptr()
    for start, end in sorted(spans):
        if start != position:
            return False
        position = end
    return position == target.data_ptr() + target.nbytes


def _merge_in_place(merge: Any, target: torch.Tensor) -> Any:
    """A factory merge that returns ``target`` itself when the loaded pieces are views of it.

    megatron-core loads into the ``ShardedTensor.data`` it is given; a factory (the gate/up halves of
    ``linear_fc1``) builds those as views of the parameter, so after the load the parameter already
    holds the values and the factory's ``torch.cat`` would only make a second copy of it.
    """

    def merged(loaded: Any) -> Any:
        leaves = list(nested_values(loaded)) if isinstance(loaded, (dict, list)) else [loaded]
        return target if _aliases_whole(leaves, target) else merge(loaded)

    return merged


def _load_in_place(sharded: dict) -> dict:
    """Make every ShardedTensorFactory of ``sharded`` merge into its own parameter (no copy)."""

    def patch(value: Any) -> Any:
        if isinstance(value, ShardedTensorFactory) and isinstance(value.data, torch.Tensor):
            return dataclasses.replace(value, merge_fn=_merge_in_place(value.merge_fn, value.data.detach()))
        return value

    return dict_list_map_inplace(patch, sharded)


def load_weights_into(model_chunks: Any, checkpoint: str | os.PathLike | CheckpointInfo) -> CheckpointInfo:
    """Load the checkpoint's weights into this rank's model chunks (every rank calls it).

    The model may be built at any tensor/pipeline/virtual-pipeline parallel size: dist-checkpointing
    reads each rank's slices of the stored global tensors. Build it from
    ``provider_kwargs_from_run_config`` so the shapes (padded vocabulary included) match. The
    checkpoint's pickles are read safely; an unsafe or corrupt file raises ``CheckpointError``.
    """
    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else load_megatron_checkpoint(checkpoint)
    weights = info.weights_dir
    chunks = _chunks(model_chunks)
    read_dcp_metadata(weights / ".metadata")  # refuse an unsafe index before anything else reads it
    metadata = _load_common(weights).get("content_metadata") or dict(CONTENT_METADATA)
    _check_vocab(chunks, info)
    keys = _model_keys(len(chunks))
    # The ShardedTensor.data of the model's own sharded state dict are its parameters (or views of
    # them): dist-checkpointing reads into them in place, and load_state_dict's copy onto itself is
    # a no-op, so the load needs no second copy of the model.
    sharded = _load_in_place(
        {key: chunk.sharded_state_dict(metadata=dict(metadata)) for key, chunk in zip(keys, chunks)}
    )
    try:
        loaded = dist_checkpointing.load(
            sharded, str(weights), sharded_strategy=_SafeLoadStrategy(), common_strategy=_SafeCommonLoadStrategy()
        )
        for key, chunk in zip(keys, chunks):
            chunk.load_state_dict(loaded.pop(key), strict=True)
        del loaded
    except (Exception, CheckpointException) as exc:
        raise CheckpointError(f"{weights}: cannot load the weights into this model: {_one_line(exc)}") from exc
    return info


__all__ = [
    "CheckpointInfo",
    "load_megatron_checkpoint",
    "load_weights_into",
    "megatron_args",
    "provider_kwargs_from_run_config",
    "provider_settings",
    "save_megatron_checkpoint",
]
