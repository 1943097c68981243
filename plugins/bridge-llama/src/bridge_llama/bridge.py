"""Llama and Mistral bridges: the stock decoder layout with Llama's config keys."""

from __future__ import annotations

from typing import Any

from bridge_core.model.decoder import DecoderBridge
from bridge_core.modeling.sliding_window import sliding_window_hf, sliding_window_kwargs
from bridge_core.modeling.specs import SDPAAttentionProvider


class LlamaBridge(DecoderBridge):
    """``LlamaForCausalLM``: Llama 2, 3, 3.1/3.2 (llama3 RoPE scaling), SmolLM; tied or untied embeddings.

    Refused with a clear error: ``attention_bias``/``mlp_bias`` (biases Megatron's GPT cannot place
    on the same projections), ``pretraining_tp`` != 1, rope types megatron-core does not reproduce.
    """


class MistralBridge(DecoderBridge):
    """``MistralForCausalLM``: explicit ``head_dim``, and ``sliding_window`` (v0.1's 4096 tokens) on every layer.

    A window is applied exactly by ``SDPACoreAttention`` (``bridge_core.modeling``) on the local
    layer spec; a null ``sliding_window`` (v0.2 and later) keeps the stock local attention.
    """

    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"sliding_window"}
    PROVIDER_CLASS = SDPAAttentionProvider

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        return {**super().hf_config_to_provider_kwargs(hf_config), **sliding_window_kwargs(hf_config)}

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        return {**super().megatron_to_hf_config(provider), **sliding_window_hf(provider)}
