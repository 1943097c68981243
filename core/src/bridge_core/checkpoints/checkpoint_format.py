"""The Megatron-LM checkpoint folder format: its layout, ``run_config.json`` and Megatron-LM ``args``.

Layout (written by ``megatron_checkpoint.save_megatron_checkpoint``; see docs/megatron-checkpoints.md)::

    <path>/latest_checkpointed_iteration.txt   "0"
    <path>/iter_0000000/                       dist-checkpointing files (.metadata, __*.distcp, common.pt,
                                               metadata.json); common.pt holds args, iteration, version
    <path>/run_config.json                     the provider's settings as plain JSON
    <path>/provenance.json                     where the weights came from
    <path>/tokenizer/                          tokenizer files

``load_megatron_checkpoint`` checks a folder and reads its JSON files (no weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bridge_core.checkpoints.hf_checkpoint import read_json_object
from bridge_core.errors import CheckpointError
from bridge_core.runtime.chunks import unwrap_chunks as unwrap_chunks  # its 1.0 home; defined in runtime

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


def saved_form(name: str, value: Any) -> Any:
    """``value`` of provider setting ``name`` as ``run_config.json`` holds it (tuples as lists, dtypes as names)."""
    if name == "activation_func":
        return _activation_name(value) if value is not None else None
    ok, plain = _json_value(value)
    return json.loads(json.dumps(plain)) if ok else value


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


def _init_fields(provider_class: Any) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(provider_class) if f.init}


def _field_default(field: Any) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _NO_DEFAULT


_NO_DEFAULT = object()


def provider_kwargs_from_run_config(run_config: dict, provider_class: Any = None) -> dict[str, Any]:
    """Keyword arguments that rebuild the saved provider from ``run_config.json`` alone.

    ``provider_class(**kwargs)`` (default ``GPTModelProvider``) gives the saved model; set the parallel
    sizes for the new run on it before ``finalize()``. Settings are read by name, so a checkpoint
    survives a megatron-core upgrade or downgrade: a setting the installed megatron-core lacks is
    dropped when it held its default where it was written (``provider_at_default``, or the tables of
    ``mcore_versions``) or only describes how a run was parallelised; one that would change the
    model is a ``CheckpointError`` naming it. Missing settings take the installed default.
    Machine-local settings (CPU initialisation, CUDA fusions) are left out and derived again.
    """
    from bridge_core.model.mcore_versions import CHANGED_DEFAULTS, FOREIGN_DEFAULTS, HARMLESS_FOREIGN

    if provider_class is None:
        from bridge_core.model.provider import GPTModelProvider as provider_class
    settings = run_config.get("provider") if isinstance(run_config, dict) else None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{RUN_CONFIG}: has no 'provider' section with the model settings")
    fields = _init_fields(provider_class)
    at_default = run_config.get("provider_at_default")
    at_default = set(at_default) if isinstance(at_default, list) else set()
    written = (run_config.get("versions") or {}).get("megatron_core", "another version")
    kwargs = {}
    for name, value in settings.items():
        if name in MACHINE_SETTINGS or name in at_default or CHANGED_DEFAULTS.get(name, {}).get(written) == value:
            continue  # at its default where it was written: the installed default (which may differ) applies
        if name not in fields:
            if name in HARMLESS_FOREIGN or FOREIGN_DEFAULTS.get(name, _NO_DEFAULT) == value:
                continue
            raise CheckpointError(
                f"{RUN_CONFIG}: provider setting {name}={value!r} (written by megatron-core {written}) is not "
                f"known to the installed megatron-core {_mcore_version()} and would change the model"
            )
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
    _check_saved_settings(kwargs)
    return kwargs


def _check_saved_settings(kwargs: dict[str, Any]) -> None:
    from bridge_core.errors import ConfigError
    from bridge_core.model.config_translation import check_model_settings

    try:
        check_model_settings(kwargs, f"{RUN_CONFIG} provider")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    dtype = kwargs.get("params_dtype")
    if dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise CheckpointError(f"{RUN_CONFIG} provider: params_dtype={dtype!r} is not float32, bfloat16 or float16")


def _mcore_version() -> str:
    from megatron.core import package_info

    return package_info.__version__


def run_config_document(provider: Any, run_config: dict, world_size: int) -> dict[str, Any]:
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
        "provider_at_default": _at_default(provider, settings),
        "omitted_provider_fields": omitted,
        "run": run_config,
    }


def _at_default(provider: Any, settings: dict[str, Any]) -> list[str]:
    """The settings holding their field's default: a megatron-core without the field may drop them."""
    fields = _init_fields(type(provider))
    names = []
    for name, value in settings.items():
        if name in fields:
            ok, default = _json_value(_field_default(fields[name]))
            if ok and default == value:
                names.append(name)
    return sorted(names)


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

    def accepted_config(self) -> list[str]:
        """The HF config keys the user accepted at import (``--accept-config``)."""
        run = self.run_config.get("run")
        keys = run.get("accept_config", []) if isinstance(run, dict) else []
        return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []

    def provider_kwargs(self, provider_class: Any = None) -> dict[str, Any]:
        """``provider_kwargs_from_run_config(self.run_config, provider_class)``."""
        try:
            return provider_kwargs_from_run_config(self.run_config, provider_class)
        except CheckpointError as exc:
            raise CheckpointError(f"{self.path}/{exc}") from None


def _read_json(file: Path, required: bool) -> dict:
    if not file.is_file():
        if required:
            raise CheckpointError(f"{file}: missing; it holds the settings needed to rebuild the model")
        return {}
    return read_json_object(file)


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
    raw = tracker.read_bytes()[:4096].strip()
    text = raw.decode("ascii", errors="replace")
    if raw == b"release":
        iteration, weights = None, path / "release"
    elif re.fullmatch(rb"[0-9]{1,12}", raw):  # ASCII digits only ("²".isdigit() is True, int("²") fails)
        iteration, weights = int(raw), path / f"iter_{int(raw):07d}"
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


# -- model chunks -------------------------------------------------------------------------------


def model_keys(n: int) -> list[str]:
    """The state-dict keys of ``n`` model chunks: ``model``, or ``model0``, ``model1``, ..."""
    return ["model"] if n == 1 else [f"model{i}" for i in range(n)]
