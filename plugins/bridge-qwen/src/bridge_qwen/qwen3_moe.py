"""Qwen3-MoE: Qwen3 attention, and a top-k softmax router over per-expert gated MLPs."""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.mappings import (
    GatedMLPMapping,
    MegatronParamMapping,
    ReplicatedMapping,
    RowParallelMapping,
)
from bridge_qwen.qwen3 import Qwen3Bridge


def moe_layer_pattern(hf_config: Any) -> list[int]:
    """1 for each layer with a sparse MLP, 0 for dense ones (``mlp_only_layers``, ``decoder_sparse_step``)."""
    dense = set(getattr(hf_config, "mlp_only_layers", None) or [])
    step = getattr(hf_config, "decoder_sparse_step", 1) or 1
    return [int(i not in dense and (i + 1) % step == 0) for i in range(hf_config.num_hidden_layers)]


class Qwen3MoeBridge(Qwen3Bridge):
    """``Qwen3MoeForCausalLM``: router (``mlp.gate``), experts, ``norm_topk_prob``, dense layers.

    ``norm_topk_prob=True`` renormalises the top-k softmax weights, which is megatron-core's
    top-k-then-softmax (``moe_router_pre_softmax=False``); ``False`` keeps softmax-then-top-k.
    The router runs in fp32 as in transformers.
    """

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *Qwen3Bridge.CONFIG_MAPPING,
        ("num_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("moe_intermediate_size", "moe_ffn_hidden_size"),
    ]
    HANDLED_HF_CONFIG = Qwen3Bridge.HANDLED_HF_CONFIG | {
        "num_local_experts",
        "norm_topk_prob",
        "mlp_only_layers",
        "decoder_sparse_step",
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        **Qwen3Bridge.PROVIDER_DEFAULTS,
        "moe_router_score_function": "softmax",
        "moe_router_load_balancing_type": "aux_loss",
        "moe_router_dtype": "fp32",
        "moe_grouped_gemm": False,
        "moe_token_dispatcher_type": "allgather",
        "moe_permute_fusion": False,
        "moe_router_fusion": False,
    }

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["moe_router_pre_softmax"] = not hf_config.norm_topk_prob
        kwargs["moe_layer_freq"] = moe_layer_pattern(hf_config)
        kwargs["moe_aux_loss_coeff"] = getattr(hf_config, "router_aux_loss_coef", 0.0) or 0.0
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out["norm_topk_prob"] = not provider.moe_router_pre_softmax
        layers = provider.moe_layer_freq
        layers = layers if isinstance(layers, list) else moe_layer_pattern_from_freq(layers, provider.num_layers)
        out.update(hf_sparsity(layers))
        return out

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        return [
            *super().mlp_mappings(),
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.gate.weight"),
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


def hf_sparsity(layers: list[int]) -> dict[str, Any]:
    """``decoder_sparse_step`` and ``mlp_only_layers`` reproducing a per-layer pattern (simplest form)."""
    for step in range(1, len(layers) + 1):
        if [int((i + 1) % step == 0) for i in range(len(layers))] == list(layers):
            return {"decoder_sparse_step": step, "mlp_only_layers": []}
    return {"decoder_sparse_step": 1, "mlp_only_layers": [i for i, sparse in enumerate(layers) if not sparse]}


def moe_layer_pattern_from_freq(freq: int, num_layers: int) -> list[int]:
    """megatron-core's integer ``moe_layer_freq`` (every k-th layer) as a per-layer list."""
    return [int(i % freq == 0) for i in range(num_layers)]
