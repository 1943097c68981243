"""Mixtral: the stock decoder whose every MLP is a softmax top-k router over gated SiLU experts.

HF routes with softmax -> top-k -> renormalise, which is megatron-core's top-k -> softmax
(``moe_router_pre_softmax=False``). Experts come in two HF layouts, both read and written:
on disk (``save_pretrained()``'s default) ``block_sparse_moe.gate.weight`` and
``block_sparse_moe.experts.E.{w1,w3,w2}.weight``; in memory (and with ``save_original_format=False``)
``mlp.gate.weight``, ``mlp.experts.gate_up_proj [E, 2I, H]`` (gate rows, then up) and
``mlp.experts.down_proj [E, H, I]``. The layout is chosen by the tensor names the source holds and
kept in the provider (``hf_expert_layout``, saved with a Megatron checkpoint), so that an export
writes what the source had.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge_core.errors import ConfigError
from bridge_core.mappings import (
    AutoMapping,
    FusedExpertMapping,
    FusedGatedExpertMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    ReplicatedMapping,
    RowParallelMapping,
)
from bridge_core.model.decoder import DecoderBridge
from bridge_core.model.provider import GPTModelProvider

PER_EXPERT, FUSED = "per_expert", "fused"
FUSED_MARK = ".mlp.experts.gate_up_proj"

# megatron-core's MoE settings that run on the local layer spec and on CPUs (FAMILIES.md §3.6).
MOE_DEFAULTS: dict[str, Any] = {
    "moe_router_score_function": "softmax",
    "moe_router_pre_softmax": False,
    "moe_router_load_balancing_type": "aux_loss",
    "moe_router_dtype": "fp32",
    "moe_grouped_gemm": False,
    "moe_token_dispatcher_type": "allgather",
    "moe_permute_fusion": False,
    "moe_router_fusion": False,
}


@dataclass
class MixtralProvider(GPTModelProvider):
    """``GPTModelProvider`` plus the HF expert layout of the source (``"per_expert"`` or ``"fused"``)."""

    hf_expert_layout: str = PER_EXPERT


def expert_layout(hf_names: Collection[str]) -> str:
    """``"fused"`` when the checkpoint stacks its experts (``mlp.experts.gate_up_proj``), else ``"per_expert"``."""
    return FUSED if any(name.endswith(FUSED_MARK) for name in hf_names) else PER_EXPERT


def no_sliding_window(value: Any, hf_config: Any) -> bool:
    """None (no sliding window)"""
    return value is None or value >= (getattr(hf_config, "max_position_embeddings", None) or 0)


class MixtralBridge(DecoderBridge):
    """``MixtralForCausalLM`` (Mixtral 8x7B, 8x22B and their instruct versions).

    Refused with a clear error: a sliding window shorter than the context (the local layer spec has
    none), and everything ``DecoderBridge`` refuses (rope types, biases).
    """

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *DecoderBridge.CONFIG_MAPPING,
        ("num_local_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("router_aux_loss_coef", "moe_aux_loss_coeff"),
    ]
    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"router_jitter_noise"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "sliding_window": no_sliding_window,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {**DecoderBridge.PROVIDER_DEFAULTS, **MOE_DEFAULTS}
    PROVIDER_CLASS = MixtralProvider
    FLOPS_DECODER_LAYER = "mixtral_decoder_layer"  # registered in plugin.py (bridge_mixtral.flops)

    layout: str = PER_EXPERT

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["moe_ffn_hidden_size"] = kwargs["ffn_hidden_size"]
        # Training-time multiplicative jitter on the router input, uniform in [1 - eps, 1 + eps] on both sides.
        kwargs["moe_input_jitter_eps"] = getattr(hf_config, "router_jitter_noise", None) or None
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out["intermediate_size"] = provider.moe_ffn_hidden_size or provider.ffn_hidden_size
        out["router_jitter_noise"] = provider.moe_input_jitter_eps or 0.0
        if provider.kv_channels == provider.hidden_size // provider.num_attention_heads and (
            self.hf_config is not None and getattr(self.hf_config, "head_dim", None) is None
        ):
            out["head_dim"] = None  # the released configs leave it implied (hidden_size / heads)
        return out

    # -- weights --------------------------------------------------------------------------------
    def select_hf_layout(self, model_config: Any, hf_names: Collection[str] | None) -> None:
        if hf_names is not None:
            model_config.hf_expert_layout = expert_layout(hf_names)
        layout = getattr(model_config, "hf_expert_layout", PER_EXPERT)
        if layout not in (PER_EXPERT, FUSED):
            raise ConfigError(f"hf_expert_layout={layout!r} in the model settings (expected 'per_expert' or 'fused')")
        self.layout = layout

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The pre-MLP norm, the router and the experts in the HF layout of ``self.layout``."""
        norm = AutoMapping(
            "decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"
        )
        if self.layout == FUSED:
            return [
                norm,
                ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.gate.weight"),
                FusedGatedExpertMapping(
                    "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                    "model.layers.*.mlp.experts.gate_up_proj",
                ),
                FusedExpertMapping(
                    "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight",
                    "model.layers.*.mlp.experts.down_proj",
                    tp_dim=1,
                ),
            ]
        return [
            norm,
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.block_sparse_moe.gate.weight"),
            GatedMLPMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                "model.layers.*.block_sparse_moe.experts.*.w1.weight",
                "model.layers.*.block_sparse_moe.experts.*.w3.weight",
            ),
            RowParallelMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight",
                "model.layers.*.block_sparse_moe.experts.*.w2.weight",
            ),
        ]
