"""HF config <-> provider translation shared by bridges: key tables, RoPE, dtypes, unknown keys.

Bridges declare ``CONFIG_MAPPING`` (HF key, provider attribute) pairs used in both directions; the
helpers here also understand transformers 5's ``rope_parameters`` and transformers 4's
``rope_theta``/``rope_scaling`` (including llama3-style scaling).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from bridge_core.errors import ConfigError

_MISSING = object()

# Keys that name, tokenise or run the model without changing its math.
NEUTRAL_HF_KEYS = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "dtype",
        "torch_dtype",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "id2label",
        "label2id",
        "problem_type",
        "chunk_size_feed_forward",
        "is_encoder_decoder",
        "initializer_range",
        "tokenizer_class",
        "max_position_embeddings",
        "output_router_logits",
        "router_aux_loss_coef",
        "_attn_implementation_autoset",
        "attn_implementation",
        "tie_encoder_decoder",
        "torchscript",
        "use_bfloat16",
        "prefix",
        "task_specific_params",
        "finetuning_task",
        "_commit_hash",
        "quantization_config",
    }
)

DTYPE_NAMES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "float": torch.float32,
    "half": torch.float16,
}


def parse_dtype(value: Any, where: str = "torch_dtype") -> torch.dtype:
    """``"bfloat16"``/``torch.bfloat16``/``"torch.bfloat16"`` -> ``torch.bfloat16``; other dtypes
    (``int8``, ``float8_e4m3fn``, ``float64``...) are a ``ConfigError`` naming ``where``."""
    name = str(value).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ConfigError(f"{where}: unsupported dtype {value!r}; use float32, bfloat16 or float16")
    return DTYPE_NAMES[name]


# Provider settings that are sizes or counts: a positive integer, or unset (None).
POSITIVE_INT_SETTINGS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "vocab_size",
    "padded_vocab_size",
    "seq_length",
    "num_moe_experts",
    "moe_router_topk",
    "moe_ffn_hidden_size",
)


def check_model_settings(kwargs: Mapping[str, Any], where: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse provider settings no model can have (``num_hidden_layers: 0``, a negative size, a
    non-positive norm epsilon) with one ``ConfigError`` naming the setting as ``where`` spells it
    (``names``: provider attribute -> the input's key, e.g. ``num_layers`` -> ``num_hidden_layers``)."""
    names = names or {}
    for attr in POSITIVE_INT_SETTINGS:
        value = kwargs.get(attr)
        if value is not None and (type(value) is not int or value < 1):
            raise ConfigError(f"{where}: {names.get(attr, attr)}={value!r} must be a positive integer")
    eps = kwargs.get("layernorm_epsilon")
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1):
        raise ConfigError(f"{where}: {names.get('layernorm_epsilon', 'layernorm_epsilon')}={eps!r} must be in (0, 1)")


def dtype_settings(dtype: str | torch.dtype) -> dict[str, Any]:
    """Provider settings that build a model computing in ``dtype`` (parameters, softmax, pipeline).

    megatron-core fixes some of its dtypes when a module is built (the attention softmax follows
    ``bf16``/``fp16``), so a model for another dtype is built in it, never cast after the fact.
    """
    want = parse_dtype(dtype)
    return {"params_dtype": want, "bf16": want == torch.bfloat16, "fp16": want == torch.float16, "pipeline_dtype": None}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hf_dtype(hf_config: Any) -> torch.dtype | None:
    """The checkpoint dtype an HF config declares (``dtype`` in transformers 5, ``torch_dtype`` in 4)."""
    for key in ("dtype", "torch_dtype"):
        value = getattr(hf_config, key, None)
        if value is not None:
            return parse_dtype(value, f"config.json {key}")
    return None


def read_rope(hf_config: Any) -> tuple[float, dict[str, Any]]:
    """``(rope_theta, scaling)`` from either transformers generation; ``scaling`` has ``rope_type``."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, Mapping) and "rope_theta" in params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        return float(params["rope_theta"]), scaling
    theta = getattr(hf_config, "rope_theta", None)
    if theta is None:
        raise ConfigError("config.json: no rope_theta (nor rope_parameters.rope_theta); the RoPE base is unknown")
    scaling = dict(getattr(hf_config, "rope_scaling", None) or {})
    if "type" in scaling and "rope_type" not in scaling:
        scaling["rope_type"] = scaling.pop("type")
    return float(theta), scaling


def rope_to_hf(theta: float, scaling: dict[str, Any] | None) -> dict[str, Any]:
    """HF config entries for RoPE in the installed transformers' spelling."""
    import transformers

    scaling = dict(scaling or {"rope_type": "default"})
    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {**scaling, "rope_theta": theta}}
    out: dict[str, Any] = {"rope_theta": theta}
    if scaling.get("rope_type", "default") != "default":
        out["rope_scaling"] = scaling
    return out


def legacy_rope_entries(rope_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """transformers 4's ``rope_theta``/``rope_scaling`` for transformers 5's ``rope_parameters``.

    Written next to ``rope_parameters`` in an exported config.json, so that transformers 4.5x
    (which ignores ``rope_parameters``) builds the same RoPE; transformers 5 reads
    ``rope_parameters`` and gets the same values either way.
    """
    scaling = {k: v for k, v in rope_parameters.items() if k != "rope_theta"}
    default = scaling.get("rope_type", "default") == "default" and set(scaling) <= {"rope_type"}
    return {"rope_theta": rope_parameters["rope_theta"], "rope_scaling": None if default else scaling}


def write_both_rope_spellings(config_file: Path) -> None:
    """Add ``legacy_rope_entries`` to a saved config.json that has ``rope_parameters`` only."""
    values = json.loads(config_file.read_text())
    params = values.get("rope_parameters")
    if not isinstance(params, Mapping) or "rope_theta" not in params:
        return
    values.update(legacy_rope_entries(params))
    config_file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def hf_to_provider(hf_config: Any, mapping: list[tuple[str, str]]) -> dict[str, Any]:
    """Provider keyword arguments from the HF keys of ``mapping`` that the config holds (not None)."""
    kwargs: dict[str, Any] = {}
    for hf_key, attr in mapping:
        value = getattr(hf_config, hf_key, None)
        if value is not None:
            kwargs[attr] = value
    return kwargs


def provider_to_hf(provider: Any, mapping: list[tuple[str, str]]) -> dict[str, Any]:
    """HF config entries from the provider attributes of ``mapping``."""
    return {hf_key: getattr(provider, attr) for hf_key, attr in mapping if getattr(provider, attr, None) is not None}


Check = Any  # a required value, or a predicate (value, hf_config) -> bool


def is_neutral_key(key: str) -> bool:
    """Keys that name, tokenise or run the model without changing its math.

    The listed ``NEUTRAL_HF_KEYS``, bookkeeping keys of the tools that wrote the file (a leading
    ``_``: ``_name_or_path``, ``_model_name_or_path``, ``_commit_hash``) and tokenizer ids
    (``*_token_id``/``*_token_ids``: ``unk_token_id``...; the weights do not depend on them).
    """
    return key in NEUTRAL_HF_KEYS or key.startswith("_") or key.endswith(("_token_id", "_token_ids"))


def is_off_value(value: Any) -> bool:
    """A value that switches a feature off: ``None``, ``False``, zero, or empty."""
    return value is None or value is False or (type(value) in (int, float) and value == 0) or value in ("", [], {})


def _class_defaults(hf_config: Any) -> dict[str, Any]:
    try:
        defaults: dict[str, Any] = type(hf_config)().to_dict()
    except Exception:
        return {}
    return defaults


def check_hf_config(
    hf_config: Any,
    *,
    handled: set[str],
    supported: Mapping[str, Check],
    where: str,
    accepted: Iterable[str] = (),
) -> None:
    """Refuse config keys that would change the math but that the bridge does not translate.

    In order, a key passes when it is:
    1. ``accepted`` by the user (``--accept-config KEY`` / ``accept_config=[...]``);
    2. neutral (``is_neutral_key``: names, token ids, runtime switches);
    3. ``handled`` by the bridge, or holds a value ``supported`` declares (a ``supported`` key that
       fails its check is refused here, whatever transformers' default: Mistral's
       ``sliding_window=4096`` is MistralConfig's default and still refused);
    4. equal to the config class's default *and* that default switches a feature off
       (``is_off_value``): the architecture's plain computation, which its bridge implements. A
       default that switches something on (a window size) is trusted only when the bridge declares it;
    5. unknown to the config class and never named by transformers' implementation of the
       architecture (``hf_reference.read_by_reference``): transformers' model ignores it, so it
       cannot change the computation the bridge reproduces (``is_llama_config``, ``use_mrope``).
    Anything else is one error naming every such key, its value and the override.
    """
    from bridge_core.model.hf_reference import read_by_reference

    accepted = set(accepted)
    values = hf_config.to_dict()
    defaults: dict[str, Any] | None = None
    problems, refused = [], []
    for key, value in sorted(values.items()):
        if key in accepted or is_neutral_key(key) or key in handled:
            continue
        if key in supported:
            check = supported[key]
            ok = check(value, hf_config) if callable(check) else value == check
            if not ok:
                shown = " ".join((check.__doc__ or repr(check)).split()) if callable(check) else repr(check)
                problems.append(f"{key}={value!r} (supported: {shown})")
                refused.append(key)
            continue
        if defaults is None:
            defaults = _class_defaults(hf_config)
        if key in defaults:
            if defaults[key] == value and is_off_value(value):
                continue
        elif not read_by_reference(hf_config, key):
            continue
        problems.append(f"{key}={value!r} (not understood)")
        refused.append(key)
    if problems:
        flags = " ".join(f"--accept-config {k}" for k in refused)
        raise ConfigError(
            f"{where}: config.json has settings this bridge cannot convert faithfully: {'; '.join(problems)}; "
            f"if you know they do not change this model's outputs, pass {flags} "
            f"(Python: accept_config={refused!r})"
        )
