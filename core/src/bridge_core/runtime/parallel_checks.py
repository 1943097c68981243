"""Parallel sizes against the model's shape: the rules, free of torch, and the config-only precheck.

``check_parallel_sizes`` holds the rules ``GPTModelProvider.finalize()`` applies; ``precheck_parallel``
applies them to a ``config.json``, a checkpoint's ``run_config.json`` (read as plain JSON) or a GGUF
header, so that a
command refuses a bad ``--tp/--pp/--ep`` in well under a second, before any rank or heavy module starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge_core.errors import ConfigError

# HF config keys (transformers' standard names) -> the model shape they give.
HF_SHAPE_KEYS = {
    "num_attention_heads": ("num_attention_heads",),
    "num_query_groups": ("num_key_value_heads",),
    "num_layers": ("num_hidden_layers",),
    "num_moe_experts": ("num_experts", "num_local_experts", "n_routed_experts"),
    "vocab_size": ("vocab_size",),
}


@dataclass(frozen=True)
class ModelShape:
    """What the parallel sizes are checked against (``None``: not known, not checked)."""

    num_attention_heads: int | None = None
    num_query_groups: int | None = None
    num_layers: int | None = None
    num_moe_experts: int | None = None
    vocab_size: int | None = None
    padded_vocab_size: int | None = None
    uneven_pipeline: bool = False


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_parallel_sizes(shape: ModelShape, tp: int = 1, pp: int = 1, ep: int = 1, vp: int | None = None) -> None:
    """Raise ``ConfigError`` naming the size and the model setting it does not fit."""
    heads = shape.num_attention_heads
    groups = shape.num_query_groups or heads
    if heads is not None and groups is not None:
        if heads % groups:
            raise ConfigError(f"num_attention_heads={heads} is not a multiple of num_query_groups={groups} (KV heads)")
        for value, what in ((heads, "num_attention_heads"), (groups, "num_query_groups (KV heads)")):
            if value % tp:
                ok = divisors(math.gcd(heads, groups))
                raise ConfigError(
                    f"tensor parallel size {tp} does not divide {what}={value} "
                    f"(tensor_model_parallel_size / --tp); valid sizes: {', '.join(map(str, ok))}"
                )
    experts = shape.num_moe_experts
    if experts and experts % ep:
        raise ConfigError(
            f"expert parallel size {ep} does not divide num_moe_experts={experts} "
            f"(expert_model_parallel_size / --ep); valid sizes: {', '.join(map(str, divisors(experts)))}"
        )
    stages = pp * (vp or 1)
    if shape.num_layers is not None and not shape.uneven_pipeline and shape.num_layers % stages:
        raise ConfigError(
            f"pipeline parallel size {pp} (x virtual {vp or 1}) "
            f"does not divide num_layers={shape.num_layers} (pipeline_model_parallel_size / --pp)"
        )
    if shape.padded_vocab_size is not None and shape.padded_vocab_size % tp:
        raise ConfigError(f"padded_vocab_size={shape.padded_vocab_size} is not divisible by tensor parallel size {tp}")


def _count(value: Any) -> int | None:
    """A positive int setting, else None (a malformed value is left to the full validation)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def shape_from_hf_config(config: Mapping[str, Any]) -> ModelShape:
    """The shape in an HF ``config.json`` dict (its standard keys; others are not guessed)."""
    found: dict[str, Any] = {}
    for field, keys in HF_SHAPE_KEYS.items():
        found[field] = next((_count(config[k]) for k in keys if k in config), None)
    return ModelShape(**found)


def shape_from_provider_settings(settings: Mapping[str, Any]) -> ModelShape:
    """The shape in a checkpoint's ``run_config.json`` ``provider`` section."""
    uneven = any(settings.get(k) for k in ("num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage"))
    return ModelShape(
        num_attention_heads=_count(settings.get("num_attention_heads")),
        num_query_groups=_count(settings.get("num_query_groups")),
        num_layers=_count(settings.get("num_layers")),
        num_moe_experts=_count(settings.get("num_moe_experts")),
        vocab_size=_count(settings.get("vocab_size")),
        padded_vocab_size=_count(settings.get("padded_vocab_size")),
        uneven_pipeline=bool(uneven),
    )


def shape_from_gguf(path: str) -> ModelShape | None:
    """The shape in a GGUF file's header (the ``<arch>.*`` keys of the GGUF spec), or None if unreadable.

    Reads the metadata only (the ``gguf`` package memory-maps the file), so that a size the model rules
    out is refused before minutes of dequantization.
    """
    try:
        from gguf import GGUFReader

        fields = GGUFReader(path).fields
        arch = _gguf_value(fields, "general.architecture")
        tokens = fields.get("tokenizer.ggml.tokens")
        return ModelShape(
            num_attention_heads=_count(_gguf_value(fields, f"{arch}.attention.head_count")),
            num_query_groups=_count(_gguf_value(fields, f"{arch}.attention.head_count_kv")),
            num_layers=_count(_gguf_value(fields, f"{arch}.block_count")),
            num_moe_experts=_count(_gguf_value(fields, f"{arch}.expert_count")),
            vocab_size=len(tokens.data) if tokens is not None else None,
        )
    except Exception:  # no gguf package, or a file its real reader will name the problem of
        return None


def _gguf_value(fields: Mapping[str, Any], key: str) -> Any:
    field = fields.get(key)
    if field is None or len(field.data) != 1:
        return None
    from gguf import GGUFValueType

    value = field.parts[field.data[0]]
    if field.types == [GGUFValueType.STRING]:
        return bytes(value).decode("utf-8", "replace")
    return int(value[0]) if value.dtype.kind in "iu" else None  # one integer, or not a count


def precheck_parallel(shape: ModelShape, where: str, tp: int = 1, pp: int = 1, ep: int = 1) -> None:
    """``check_parallel_sizes`` with the file the shape came from named in the error."""
    try:
        check_parallel_sizes(shape, tp=tp, pp=pp, ep=ep)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
