"""Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): Qwen2 attention, routed experts plus a gated shared expert.

Per sparse layer HF computes ``experts(x) + sigmoid(shared_expert_gate(x)) * shared_expert(x)``, which
is megatron-core's ``SharedExpertMLP`` with ``moe_shared_expert_gate=True`` (its ``gate_weight [1, H]``,
replicated). ``norm_topk_prob=True`` renormalises the top-k softmax weights (megatron-core's
top-k-then-softmax, ``moe_router_pre_softmax=False``); ``False`` keeps softmax-then-top-k
(``moe_router_pre_softmax=True``). Dense layers (``mlp_only_layers``, ``decoder_sparse_step``) become
megatron-core's ``moe_layer_freq`` list. Experts are read in both HF layouts, per expert
(``mlp.experts.E.{gate,up,down}_proj.weight``, ``save_pretrained()``'s default) or stacked
(``mlp.experts.gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``), chosen by the names the source
holds and kept in the provider (``hf_expert_layout``), so that an export writes what the source had.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from bridge_core.errors import ConfigError
from bridge_core.mappings import (
    FusedExpertMapping,
    FusedGatedExpertMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    ReplicatedMapping,
    RowParallelMapping,
)
from bridge_core.model.provider import GPTModelProvider
from bridge_qwen.qwen2 import Qwen2Bridge
from bridge_qwen.qwen3_moe import hf_sparsity, moe_layer_pattern, moe_layer_pattern_from_freq

PER_EXPERT, FUSED = "per_expert", "fused"
FUSED_MARK = ".mlp.experts.gate_up_proj"


@dataclass
class Qwen2MoeProvider(GPTModelProvider):
    """``GPTModelProvider`` plus the HF expert layout of the source (``"per_expert"`` or ``"fused"``)."""

    hf_expert_layout: str = PER_EXPERT


def expert_layout(hf_names: Collection[str]) -> str:
    """``"fused"`` when the checkpoint stacks its experts (``mlp.experts.gate_up_proj``), else ``"per_expert"``."""
    return FUSED if any(name.endswith(FUSED_MARK) for name in hf_names) else PER_EXPERT


def sparse_layers(hf_config: Any) -> list[int]:
    """The per-layer MoE pattern, after refusing sparsity settings that name no valid layout."""
    layers = hf_config.num_hidden_layers
    step = getattr(hf_config, "decoder_sparse_step", 1)
    if not isinstance(step, int) or step < 1:
        raise ConfigError(f"config.json: decoder_sparse_step={step!r} (expected an integer >= 1)")
    dense = getattr(hf_config, "mlp_only_layers", None) or []
    wrong = [i for i in dense if not isinstance(i, int) or not 0 <= i < layers]
    if wrong:
        raise ConfigError(f"config.json: mlp_only_layers={dense!r} names layers outside 0..{layers - 1}: {wrong}")
    pattern = moe_layer_pattern(hf_config)
    if not any(pattern):
        raise ConfigError(
            f"config.json: decoder_sparse_step={step} and mlp_only_layers={dense!r} leave no sparse layer; "
            "a model without experts converts as Qwen2ForCausalLM"
        )
    return pattern


def sparsity_entries(layers: list[int], source: Any) -> dict[str, Any]:
    """``decoder_sparse_step``/``mlp_only_layers`` for a per-layer pattern: the source config's own
    spelling when it gives that pattern (several do), else the simplest one."""
    if source is not None and getattr(source, "num_hidden_layers", None) == len(layers):
        try:
            if moe_layer_pattern(source) == layers:
                return {
                    "decoder_sparse_step": source.decoder_sparse_step,
                    "mlp_only_layers": list(source.mlp_only_layers or []),
                }
        except (AttributeError, TypeError, ZeroDivisionError):
            pass
    return hf_sparsity(layers)


class Qwen2MoeBridge(Qwen2Bridge):
    """``Qwen2MoeForCausalLM``: QKV biases (``qkv_bias``), router, experts, gated shared expert, dense layers."""

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *Qwen2Bridge.CONFIG_MAPPING,
        ("num_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("moe_intermediate_size", "moe_ffn_hidden_size"),
        ("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size"),
        ("router_aux_loss_coef", "moe_aux_loss_coeff"),
    ]
    HANDLED_HF_CONFIG = Qwen2Bridge.HANDLED_HF_CONFIG | {
        "norm_topk_prob",
        "mlp_only_layers",
        "decoder_sparse_step",
        "qkv_bias",
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        **Qwen2Bridge.PROVIDER_DEFAULTS,
        "moe_shared_expert_gate": True,
        "moe_router_score_function": "softmax",
        "moe_router_load_balancing_type": "aux_loss",
        "moe_router_dtype": "fp32",
        "moe_grouped_gemm": False,
        "moe_token_dispatcher_type": "allgather",
        "moe_permute_fusion": False,
        "moe_router_fusion": False,
    }
    PROVIDER_CLASS = Qwen2MoeProvider

    layout: str = PER_EXPERT

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        if not getattr(hf_config, "num_experts", 0):
            raise ConfigError(
                f"config.json: num_experts={getattr(hf_config, 'num_experts', None)!r}: "
                "a model without experts converts as Qwen2ForCausalLM"
            )
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["add_qkv_bias"] = bool(getattr(hf_config, "qkv_bias", True))
        kwargs["moe_router_pre_softmax"] = not hf_config.norm_topk_prob
        kwargs["moe_layer_freq"] = sparse_layers(hf_config)
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out["qkv_bias"] = provider.add_qkv_bias
        out["norm_topk_prob"] = not provider.moe_router_pre_softmax
        layers = provider.moe_layer_freq
        layers = layers if isinstance(layers, list) else moe_layer_pattern_from_freq(layers, provider.num_layers)
        out.update(sparsity_entries(list(layers), self.hf_config))
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
        """Dense MLPs (stock), router, shared expert and its gate, and the experts in ``self.layout``."""
        common = [
            *super().mlp_mappings(),
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.gate.weight"),
            GatedMLPMapping(
                "decoder.layers.*.mlp.shared_experts.linear_fc1.weight",
                "model.layers.*.mlp.shared_expert.gate_proj.weight",
                "model.layers.*.mlp.shared_expert.up_proj.weight",
            ),
            RowParallelMapping(
                "decoder.layers.*.mlp.shared_experts.linear_fc2.weight",
                "model.layers.*.mlp.shared_expert.down_proj.weight",
            ),
            ReplicatedMapping(
                "decoder.layers.*.mlp.shared_experts.gate_weight", "model.layers.*.mlp.shared_expert_gate.weight"
            ),
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
