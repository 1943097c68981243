"""Qwen2: the stock decoder with biases on the q, k and v projections."""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.model.decoder import DecoderBridge


def no_sliding_window(value: Any, hf_config: Any) -> bool:
    """anything while use_sliding_window is false"""
    return not getattr(hf_config, "use_sliding_window", False)


class Qwen2Bridge(DecoderBridge):
    """``Qwen2ForCausalLM`` (Qwen2, Qwen2.5): QKV bias, no sliding window."""

    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {**DecoderBridge.PROVIDER_DEFAULTS, "add_qkv_bias": True}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "sliding_window": no_sliding_window,
        "max_window_layers": no_sliding_window,
    }
