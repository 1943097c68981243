"""``DecoderBridge``: stock translation of a pre-norm GPT-style decoder in HF's common layout.

RMSNorm, rotary embeddings, grouped-query attention, gated SiLU MLP, ``model.layers.N.self_attn``
and ``model.layers.N.mlp`` names. Families whose HF layout matches subclass it and add what differs
(biases, QK-norm, experts); it names both the local layer spec's and Transformer Engine's norms.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import torch.nn.functional as F

from bridge_core.bridge import MegatronModelBridge
from bridge_core.config_translation import read_rope, rope_to_hf
from bridge_core.errors import ConfigError
from bridge_core.mapping_registry import MegatronMappingRegistry
from bridge_core.mappings import (
    AutoMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)

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
    HF_PREFIX: ClassVar[str] = "model."
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
    def attention_mappings(self) -> list[MegatronParamMapping]:
        """QKV (weights and biases), output projection, and the pre-attention norm in both spellings."""
        p = f"{self.HF_PREFIX}layers.*."
        return [
            AutoMapping("decoder.layers.*.input_layernorm.weight", f"{p}input_layernorm.weight"),
            AutoMapping("decoder.layers.*.self_attention.linear_qkv.layer_norm_weight", f"{p}input_layernorm.weight"),
            QKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.weight",
                f"{p}self_attn.q_proj.weight",
                f"{p}self_attn.k_proj.weight",
                f"{p}self_attn.v_proj.weight",
            ),
            QKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.bias",
                f"{p}self_attn.q_proj.bias",
                f"{p}self_attn.k_proj.bias",
                f"{p}self_attn.v_proj.bias",
            ),
            RowParallelMapping("decoder.layers.*.self_attention.linear_proj.weight", f"{p}self_attn.o_proj.weight"),
        ]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The dense gated MLP and the pre-MLP norm in both spellings."""
        p = f"{self.HF_PREFIX}layers.*."
        return [
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", f"{p}post_attention_layernorm.weight"),
            AutoMapping("decoder.layers.*.mlp.linear_fc1.layer_norm_weight", f"{p}post_attention_layernorm.weight"),
            GatedMLPMapping(
                "decoder.layers.*.mlp.linear_fc1.weight", f"{p}mlp.gate_proj.weight", f"{p}mlp.up_proj.weight"
            ),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", f"{p}mlp.down_proj.weight"),
        ]

    def embedding_mappings(self) -> list[MegatronParamMapping]:
        """Word embeddings, final norm and output layer (the core fills a tied output layer itself)."""
        return [
            VocabParallelMapping("embedding.word_embeddings.weight", f"{self.HF_PREFIX}embed_tokens.weight"),
            ReplicatedMapping("decoder.final_layernorm.weight", f"{self.HF_PREFIX}norm.weight"),
            VocabParallelMapping("output_layer.weight", "lm_head.weight"),
        ]

    def mapping_registry(self) -> MegatronMappingRegistry:
        return MegatronMappingRegistry(*self.embedding_mappings(), *self.attention_mappings(), *self.mlp_mappings())
