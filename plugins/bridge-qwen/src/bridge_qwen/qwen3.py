"""Qwen3: the stock decoder with RMSNorm on each query and key head (QK-norm)."""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.mappings import MegatronParamMapping, ReplicatedMapping
from bridge_core.model.decoder import DecoderBridge
from bridge_qwen.qwen2 import no_sliding_window


def qk_norm_mappings() -> list[MegatronParamMapping]:
    """Per-head query/key RMSNorm weights (replicated)."""
    return [
        ReplicatedMapping(
            "decoder.layers.*.self_attention.q_layernorm.weight", "model.layers.*.self_attn.q_norm.weight"
        ),
        ReplicatedMapping(
            "decoder.layers.*.self_attention.k_layernorm.weight", "model.layers.*.self_attn.k_norm.weight"
        ),
    ]


class Qwen3Bridge(DecoderBridge):
    """``Qwen3ForCausalLM``: QK-norm, explicit ``head_dim``, no attention bias, no sliding window."""

    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {**DecoderBridge.PROVIDER_DEFAULTS, "qk_layernorm": True}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "sliding_window": no_sliding_window,
        "max_window_layers": no_sliding_window,
    }

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [*super().attention_mappings(), *qk_norm_mappings()]
