"""OLMoE bridge: Hugging Face ``OlmoeForCausalLM`` <-> Megatron-Core GPT with MoE (OLMoE-1B-7B).

What OLMoE changes in the stock pre-norm MoE decoder: the full-width QK-norm of OLMo-2 (same modules,
exact at any TP) and routing by softmax over all experts, then top-k, without renormalisation
(``norm_topk_prob=False`` -> megatron-core's ``moe_router_pre_softmax=True``; ``True`` is Mixtral's
renormalised top-k). ``clip_qkv`` (clamping q, k, v) has no megatron-core equivalent: a non-null value
is refused. Experts come in two HF layouts, both read and written, chosen by the tensor names the
source holds and kept in the provider (``hf_expert_layout``): per expert (``save_pretrained()``'s
default) ``mlp.experts.E.{gate_proj,up_proj,down_proj}.weight``; stacked (transformers' in-memory
layout, ``save_original_format=False``) ``mlp.experts.gate_up_proj [E, 2I, H]`` and
``mlp.experts.down_proj [E, H, I]``. The router is ``mlp.gate.weight`` in both.
"""

from __future__ import annotations

from collections.abc import Collection
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

from bridge_olmo.olmo2 import qk_norm_mappings
from bridge_olmo.providers import OlmoeProvider

PER_EXPERT, FUSED = "per_expert", "fused"
FUSED_MARK = ".mlp.experts.gate_up_proj"

# megatron-core's MoE settings that run on the local layer spec and on CPUs (FAMILIES.md §3.6).
MOE_DEFAULTS: dict[str, Any] = {
    "moe_router_score_function": "softmax",
    "moe_router_load_balancing_type": "aux_loss",
    "moe_router_dtype": "fp32",
    "moe_grouped_gemm": False,
    "moe_token_dispatcher_type": "allgather",
    "moe_permute_fusion": False,
    "moe_router_fusion": False,
}


def expert_layout(hf_names: Collection[str]) -> str:
    """``"fused"`` when the checkpoint stacks its experts (``mlp.experts.gate_up_proj``), else ``"per_expert"``."""
    return FUSED if any(name.endswith(FUSED_MARK) for name in hf_names) else PER_EXPERT


class OlmoeBridge(DecoderBridge):
    """``OlmoeForCausalLM`` (see the module docstring); refuses ``clip_qkv`` and what ``DecoderBridge`` refuses."""

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *DecoderBridge.CONFIG_MAPPING,
        ("num_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("router_aux_loss_coef", "moe_aux_loss_coeff"),
    ]
    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"norm_topk_prob", "output_router_logits"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {**DecoderBridge.SUPPORTED_HF_CONFIG, "clip_qkv": None}
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        **DecoderBridge.PROVIDER_DEFAULTS,
        **MOE_DEFAULTS,
        "qk_layernorm": True,
    }
    PROVIDER_CLASS = OlmoeProvider

    layout: str = PER_EXPERT

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["moe_ffn_hidden_size"] = kwargs["ffn_hidden_size"]
        # softmax over all experts, then top-k, kept as is (False); or renormalised over the top k (True)
        kwargs["moe_router_pre_softmax"] = not bool(getattr(hf_config, "norm_topk_prob", False))
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out["intermediate_size"] = provider.moe_ffn_hidden_size or provider.ffn_hidden_size
        out["norm_topk_prob"] = not provider.moe_router_pre_softmax
        out["clip_qkv"] = None
        return out

    # -- weights --------------------------------------------------------------------------------
    def select_hf_layout(self, model_config: Any, hf_names: Collection[str] | None) -> None:
        if hf_names is not None:
            model_config.hf_expert_layout = expert_layout(hf_names)
        layout = getattr(model_config, "hf_expert_layout", PER_EXPERT)
        if layout not in (PER_EXPERT, FUSED):
            raise ConfigError(f"hf_expert_layout={layout!r} in the model settings (expected 'per_expert' or 'fused')")
        self.layout = layout

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [*super().attention_mappings(), *qk_norm_mappings()]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The pre-MLP norm, the router and the experts in the HF layout of ``self.layout``."""
        common = [
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"),
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.gate.weight"),
        ]
        if self.layout == FUSED:
            return [
                *common,
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
            *common,
            GatedMLPMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                "model.layers.*.mlp.experts.*.gate_proj.weight",
                "model.layers.*.mlp.experts.*.up_proj.weight",
            ),
            RowParallelMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight",
                "model.layers.*.mlp.experts.*.down_proj.weight",
            ),
        ]
