"""Phi-3 bridge: Hugging Face ``Phi3ForCausalLM`` <-> Megatron-Core GPT.

Baked from bridge-core's plugin template; what Phi-3 adds to the stock decoder: fused ``qkv_proj``
and ``gate_up_proj`` tensors (``mappings.py``), ``partial_rotary_factor`` (``rotary_percent``) and a
``sliding_window`` on every layer (exact through ``bridge_core.modeling``'s SDPA core attention).
``longrope`` scaling (the 128k variants) is refused: megatron-core's rotary embedding has one fixed set
of frequencies, while transformers switches between the short and long factors with the length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bridge_core.errors import ConfigError
from bridge_core.mappings import AutoMapping, MegatronParamMapping, RowParallelMapping
from bridge_core.model.config_translation import read_rope, rope_to_hf
from bridge_core.model.decoder import DecoderBridge
from bridge_core.modeling.sliding_window import sliding_window_hf, sliding_window_kwargs
from bridge_core.modeling.specs import SDPAAttentionProvider
from bridge_phi.mappings import FusedGatedMLPMapping, FusedQKVMapping


def partial_rotary_factor(hf_config: Any) -> float:
    """The fraction of each head that RoPE rotates: ``rope_parameters`` (what transformers 5 reads), else top level."""
    params = getattr(hf_config, "rope_parameters", None)
    top = getattr(hf_config, "partial_rotary_factor", None)
    nested = params.get("partial_rotary_factor") if isinstance(params, Mapping) else None
    if nested is not None and top is not None and float(nested) != float(top):
        raise ConfigError(
            f"config.json: partial_rotary_factor={top!r} differs from rope_parameters.partial_rotary_factor={nested!r}"
        )
    value = float(nested if nested is not None else top if top is not None else 1.0)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"config.json: partial_rotary_factor={value!r} is not supported (0 < factor <= 1)")
    return value


class Phi3Bridge(DecoderBridge):
    """``Phi3ForCausalLM`` without ``longrope``: Phi-3-mini-4k, Phi-3-medium-4k (128k variants, Phi-3.5 use it)."""

    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {
        "sliding_window",
        "partial_rotary_factor",
        "original_max_position_embeddings",  # read by longrope only, which is refused
    }
    HANDLED_ROPE_PARAMETERS = frozenset({"partial_rotary_factor"})  # -> rotary_percent
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
    }
    PROVIDER_CLASS = SDPAAttentionProvider
    FLOPS_DECODER_LAYER = "phi_decoder_layer"  # registered in plugin.py (bridge_phi.flops)

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        _, scaling = read_rope(hf_config)
        rope_type = scaling.get("rope_type", "default")
        if rope_type != "default":
            raise ConfigError(
                f"config.json: rope_scaling.type={rope_type} is not supported by bridge-phi "
                "(megatron-core's rotary embedding cannot switch between longrope's short and long factors)"
            )
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["rotary_percent"] = partial_rotary_factor(hf_config)
        kwargs.update(sliding_window_kwargs(hf_config))
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        factor = float(provider.rotary_percent)
        out.update(rope_to_hf(provider.rotary_base, {"rope_type": "default", "partial_rotary_factor": factor}))
        out["partial_rotary_factor"] = factor
        out.update(sliding_window_hf(provider))
        return out

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [
            AutoMapping("decoder.layers.*.input_layernorm.weight", "model.layers.*.input_layernorm.weight"),
            FusedQKVMapping(
                "decoder.layers.*.self_attention.linear_qkv.weight", "model.layers.*.self_attn.qkv_proj.weight"
            ),
            RowParallelMapping(
                "decoder.layers.*.self_attention.linear_proj.weight", "model.layers.*.self_attn.o_proj.weight"
            ),
        ]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        return [
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"),
            FusedGatedMLPMapping("decoder.layers.*.mlp.linear_fc1.weight", "model.layers.*.mlp.gate_up_proj.weight"),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight"),
        ]
