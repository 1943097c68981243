"""OLMo-2 bridge: Hugging Face ``Olmo2ForCausalLM`` <-> Megatron-Core GPT (OLMo-2 1B, 7B, 13B).

What OLMo-2 changes in the stock decoder: post-norm layers (``post_attention_layernorm`` after the
attention, ``post_feedforward_layernorm`` after the MLP, no norm before either) and a full-width
QK-norm (``q_norm [heads * head_dim]``, ``k_norm [groups * head_dim]``, over all heads, before RoPE).
Both come from ``bridge_olmo.modeling_olmo`` (Megatron names ``...linear_proj.post_layernorm``,
``...linear_fc2.post_layernorm``, ``...self_attention.q_layernorm`` / ``k_layernorm``, the latter two
split across tensor-parallel ranks like the heads).
"""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.mappings import (
    ColumnParallelMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
)
from bridge_core.model.decoder import DecoderBridge

from bridge_olmo.providers import Olmo2Provider


def qk_norm_mappings() -> list[MegatronParamMapping]:
    """HF ``self_attn.q_norm`` / ``k_norm`` <-> the full-width norms, split across TP like the heads."""
    return [
        ColumnParallelMapping(
            "decoder.layers.*.self_attention.q_layernorm.weight", "model.layers.*.self_attn.q_norm.weight"
        ),
        ColumnParallelMapping(
            "decoder.layers.*.self_attention.k_layernorm.weight", "model.layers.*.self_attn.k_norm.weight"
        ),
    ]


class Olmo2Bridge(DecoderBridge):
    """``Olmo2ForCausalLM``: post-norm layers, full-width QK-norm (see the module docstring)."""

    PROVIDER_CLASS = Olmo2Provider
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {**DecoderBridge.PROVIDER_DEFAULTS, "qk_layernorm": True}

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [
            QKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.weight",
                "model.layers.*.self_attn.q_proj.weight",
                "model.layers.*.self_attn.k_proj.weight",
                "model.layers.*.self_attn.v_proj.weight",
            ),
            RowParallelMapping(
                "decoder.layers.*.self_attention.linear_proj.weight", "model.layers.*.self_attn.o_proj.weight"
            ),
            *qk_norm_mappings(),
            ReplicatedMapping(
                "decoder.layers.*.self_attention.linear_proj.post_layernorm.weight",
                "model.layers.*.post_attention_layernorm.weight",
            ),
        ]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        return [
            GatedMLPMapping(
                "decoder.layers.*.mlp.linear_fc1.weight",
                "model.layers.*.mlp.gate_proj.weight",
                "model.layers.*.mlp.up_proj.weight",
            ),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight"),
            ReplicatedMapping(
                "decoder.layers.*.mlp.linear_fc2.post_layernorm.weight",
                "model.layers.*.post_feedforward_layernorm.weight",
            ),
        ]
