"""``DecoderBridge``: stock translation of a pre-norm GPT-style decoder in HF's common layout.

RMSNorm, rotary embeddings, grouped-query attention, gated SiLU MLP, ``model.layers.N.self_attn``
and ``model.layers.N.mlp`` names. Families whose HF layout matches subclass it and add what differs
(biases, QK-norm, experts). Its tables are literal full names (``*``: the layer index).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import torch.nn.functional as F

from bridge_core.errors import ConfigError
from bridge_core.mappings import (
    AutoMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)
from bridge_core.model.bridge import MegatronModelBridge
from bridge_core.model.config_translation import read_rope, rope_to_hf
from bridge_core.model.mapping_registry import MegatronMappingRegistry

STOCK_PREFIX = "model."  # the HF prefix the mapping tables are written with

# megatron-core fixes llama3 scaling's other constants; other values cannot be reproduced.
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


# The RoPE parameters each supported type reads; any other one would be silently ignored.
_ROPE_KEYS = {"default": (), "linear": ("factor",), "llama3": ("factor", *LLAMA3_FIXED)}


def rope_kwargs(hf_config: Any, handled: Collection[str] = ()) -> dict[str, Any]:
    """Provider RoPE settings for the HF rope types megatron-core reproduces exactly; else an error.

    ``handled``: RoPE parameters the calling bridge translates itself (e.g. ``partial_rotary_factor``).
    """
    theta, scaling = read_rope(hf_config)
    kwargs: dict[str, Any] = {"rotary_base": theta, "position_embedding_type": "rope"}
    rope_type = scaling.get("rope_type", "default")
    if rope_type not in _ROPE_KEYS:
        raise ConfigError(f"config.json: rope type {rope_type!r} is not supported (supported: default, linear, llama3)")
    extra = sorted(set(scaling) - {"rope_type", *_ROPE_KEYS[rope_type], *handled})
    if extra:
        shown = ", ".join(f"{k}={scaling[k]!r}" for k in extra)
        raise ConfigError(f"config.json: rope {rope_type!r} with {shown} is not supported (megatron-core ignores it)")
    if rope_type == "default":
        return kwargs
    if rope_type == "llama3":
        wrong = {k: scaling.get(k) for k, v in LLAMA3_FIXED.items() if float(scaling.get(k, v)) != v}
        if wrong:
            raise ConfigError(
                f"config.json: llama3 rope scaling with {wrong} is not supported (megatron-core fixes {LLAMA3_FIXED})"
            )
        return {**kwargs, "rope_scaling": True, "rope_scaling_factor": float(scaling["factor"])}
    return {**kwargs, "seq_len_interpolation_factor": float(scaling["factor"])}


def rope_hf_entries(provider: Any) -> dict[str, Any]:
    """The inverse of ``rope_kwargs``."""
    if provider.rope_scaling:
        scaling = {"rope_type": "llama3", "factor": provider.rope_scaling_factor, **LLAMA3_FIXED}
    elif provider.seq_len_interpolation_factor:
        scaling = {"rope_type": "linear", "factor": provider.seq_len_interpolation_factor}
    else:
        scaling = None
    return rope_to_hf(provider.rotary_base, scaling)


def hf_prefixed(mappings: list[MegatronParamMapping], prefix: str) -> list[MegatronParamMapping]:
    """``mappings`` with every HF name written ``model.…`` moved under ``prefix`` instead (the one place
    ``HF_PREFIX`` applies: a family's tables keep the names of its text-only checkpoints)."""
    if prefix == STOCK_PREFIX:
        return mappings

    def move(name: str) -> str:
        return prefix + name[len(STOCK_PREFIX) :] if name.startswith(STOCK_PREFIX) else name

    return [m.renamed(hf_name=move) for m in mappings]


def _full_attention_only(value: Any, hf_config: Any) -> bool:
    """only full attention (no sliding window)"""
    return value is None or all(t == "full_attention" for t in value)


class DecoderBridge(MegatronModelBridge):
    """Stock bridge for HF decoders in the common ``model.layers.N`` layout (see module docstring)."""

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        ("num_hidden_layers", "num_layers"),
        ("hidden_size", "hidden_size"),
        ("intermediate_size", "ffn_hidden_size"),
        ("num_attention_heads", "num_attention_heads"),
        ("num_key_value_heads", "num_query_groups"),
        ("head_dim", "kv_channels"),
        ("rms_norm_eps", "layernorm_epsilon"),
        ("vocab_size", "vocab_size"),
        ("max_position_embeddings", "seq_length"),
        ("tie_word_embeddings", "share_embeddings_and_output_weights"),
        ("attention_dropout", "attention_dropout"),
        ("initializer_range", "init_method_std"),
    ]
    HANDLED_HF_CONFIG = frozenset({"rope_parameters", "rope_theta", "rope_scaling"})
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "layer_types": _full_attention_only,
        "use_sliding_window": False,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        "normalization": "RMSNorm",
        "gated_linear_unit": True,
        "activation_func": F.silu,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "share_embeddings_and_output_weights": False,
    }
    # The HF name prefix of the language model (e.g. ``model.language_model.``): ``hf_prefixed`` applies it
    HF_PREFIX: ClassVar[str] = STOCK_PREFIX
    # RoPE parameters (``rope_parameters`` entries) a subclass translates itself; any other is refused
    HANDLED_ROPE_PARAMETERS: ClassVar[frozenset[str]] = frozenset()

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs.update(rope_kwargs(hf_config, self.HANDLED_ROPE_PARAMETERS))
        if kwargs.get("kv_channels") is None:
            kwargs["kv_channels"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out["num_key_value_heads"] = provider.num_query_groups or provider.num_attention_heads
        out["hidden_act"] = "silu"
        out.update(rope_hf_entries(provider))
        return out

    # -- weights --------------------------------------------------------------------------------
    # Full names, ``*`` the layer index, each parameter in the local layer spec's spelling (the registry
    # adds Transformer Engine's). HF names are written under ``model.``; ``HF_PREFIX`` moves them.
    def attention_mappings(self) -> list[MegatronParamMapping]:
        """QKV (weights and biases), output projection, and the pre-attention norm."""
        return [
            AutoMapping("decoder.layers.*.input_layernorm.weight", "model.layers.*.input_layernorm.weight"),
            QKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.weight",
                "model.layers.*.self_attn.q_proj.weight",
                "model.layers.*.self_attn.k_proj.weight",
                "model.layers.*.self_attn.v_proj.weight",
            ),
            QKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.bias",
                "model.layers.*.self_attn.q_proj.bias",
                "model.layers.*.self_attn.k_proj.bias",
                "model.layers.*.self_attn.v_proj.bias",
            ),
            RowParallelMapping(
                "decoder.layers.*.self_attention.linear_proj.weight", "model.layers.*.self_attn.o_proj.weight"
            ),
        ]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The dense gated MLP and the pre-MLP norm."""
        return [
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"),
            GatedMLPMapping(
                "decoder.layers.*.mlp.linear_fc1.weight",
                "model.layers.*.mlp.gate_proj.weight",
                "model.layers.*.mlp.up_proj.weight",
            ),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight"),
        ]

    def embedding_mappings(self) -> list[MegatronParamMapping]:
        """Word embeddings, final norm and output layer (the core fills a tied output layer itself)."""
        return [
            VocabParallelMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
            ReplicatedMapping("decoder.final_layernorm.weight", "model.norm.weight"),
            VocabParallelMapping("output_layer.weight", "lm_head.weight"),
        ]

    def mapping_registry(self) -> MegatronMappingRegistry:
        mappings = [*self.embedding_mappings(), *self.attention_mappings(), *self.mlp_mappings()]
        return MegatronMappingRegistry(*hf_prefixed(mappings, self.HF_PREFIX))
