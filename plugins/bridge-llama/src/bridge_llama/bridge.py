"""Llama and Mistral bridges: the stock decoder layout with Llama's config keys."""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.decoder import DecoderBridge


class LlamaBridge(DecoderBridge):
    """``LlamaForCausalLM``: Llama 2, 3, 3.1/3.2 (llama3 RoPE scaling), SmolLM; tied or untied embeddings.

    Refused with a clear error: ``attention_bias``/``mlp_bias`` (biases Megatron's GPT cannot place
    on the same projections), ``pretraining_tp`` != 1, rope types megatron-core does not reproduce.
    """


def _no_sliding_window(value: Any, hf_config: Any) -> bool:
    """None (no sliding window)"""
    return value is None or value >= getattr(hf_config, "max_position_embeddings", 0)


class MistralBridge(DecoderBridge):
    """``MistralForCausalLM`` without sliding-window attention (Mistral 7B v0.2 and later, Ministral-style
    configs with ``sliding_window: null``). v0.1's 4096-token window is refused: the local layer spec
    has no sliding-window attention."""

    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "sliding_window": _no_sliding_window,
    }
