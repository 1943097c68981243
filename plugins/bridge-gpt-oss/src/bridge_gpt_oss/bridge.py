"""GPT-OSS: a MoE decoder with attention sinks, YaRN, alternating sliding windows, biases everywhere,
a clamped gated activation and stacked, interleaved experts (bf16 or MXFP4 on disk).

HF -> megatron-core (FAMILIES.md §11, §13):
- ``self_attn.{q,k,v,o}_proj`` with biases -> ``linear_qkv`` / ``linear_proj`` (+ ``.bias``);
  ``self_attn.sinks [heads]`` -> ``core_attention.softmax_offset`` (``softmax_type="learnable"``).
- ``mlp.router.{weight,bias}`` -> ``mlp.router.{weight,bias}``: top-k of the logits, then a softmax
  over them (``moe_router_pre_softmax=False``).
- bf16 experts: ``mlp.experts.gate_up_proj [E, H, 2I]`` (``x @ W``; gate = even columns, up = odd)
  and ``gate_up_proj_bias [E, 2I]`` -> per expert ``linear_fc1`` = ``[gate; up]`` (``[2I, H]``);
  ``down_proj [E, I, H]`` and ``down_proj_bias [E, H]`` -> ``linear_fc2`` (``[H, I]``).
- MXFP4 experts: ``gate_up_proj_blocks/_scales`` and ``down_proj_blocks/_scales`` dequantize to
  ``[E, 2I, H]`` and ``[E, H, I]`` (rows = outputs, no transpose). bf16 ``down_proj [E, I, H]`` and
  dequantized ``[E, H, I]`` have the same shape when ``I == H`` (2880 in both released sizes), so the
  format is chosen by the tensor names and ``quantization_config``, never by shape. Export always
  writes the bf16 layout.
- The expert activation is ``(clamp(up, ±limit) + 1) * quick_gelu(clamp(gate, max=limit))``:
  ``activation_func=quick_gelu`` (alpha 1.702), ``activation_func_clamp_value=swiglu_limit``,
  ``glu_linear_offset=1``. Sliding windows on the layers ``layer_types`` marks ``sliding_attention``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, ClassVar

import torch
from bridge_core.errors import ConfigError
from bridge_core.mappings import (
    AutoMapping,
    FusedExpertMapping,
    MegatronParamMapping,
    ReplicatedMapping,
)
from bridge_core.mappings.base import MappingContext, Tensor
from bridge_core.mappings.fused import merge_gated, split_gated
from bridge_core.model.bridge import MegatronModelBridge
from bridge_core.model.config_translation import read_rope, rope_to_hf
from bridge_core.model.decoder import DecoderBridge
from megatron.core.activations import quick_gelu  # the one a Megatron checkpoint names (run_config.json)

from bridge_gpt_oss.modeling_gpt_oss.provider import GptOssProvider
from bridge_gpt_oss.mxfp4 import dequantize_mxfp4

MXFP4_MARK = "_blocks"
OTHER_QUANT_SCALES = ("_scale_inv", ".weight_scale", ".input_scale", ".qweight", ".qzeros")
QUICK_GELU_ALPHA = 1.702  # fixed inside megatron-core's quick_gelu
LAYER_TYPES = {"sliding_attention": 1, "full_attention": 0}
YARN_KEYS = {"rope_type", "factor", "beta_fast", "beta_slow", "original_max_position_embeddings", "truncate"}

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


def deinterleave(t: Tensor) -> Tensor:
    """Interleaved ``[g0, u0, g1, u1, ...]`` rows -> ``[gate; up]``."""
    return torch.cat([t[0::2], t[1::2]], dim=0)


def interleave(t: Tensor) -> Tensor:
    """``[gate; up]`` rows -> interleaved ``[g0, u0, g1, u1, ...]`` (inverse of ``deinterleave``)."""
    gate, up = torch.chunk(t, 2, dim=0)
    return torch.stack([gate, up], dim=1).reshape(t.shape)


class GatedSplit:
    """Tensor parallel sharding of a gated ``linear_fc1``: gate and up split separately."""

    tp_dim = 0

    def split(self, full: Tensor, n: int) -> list[Tensor]:
        return split_gated(full, n)

    def merge(self, shards: list[Tensor]) -> Tensor:
        return merge_gated(shards)


class InterleavedGateUpMapping(GatedSplit, FusedExpertMapping):
    """Expert ``linear_fc1.weight [2I, H]`` <-> slice ``[H, 2I]`` of ``gate_up_proj`` (gate = even columns)."""

    def __init__(self, megatron_param: str, hf_param: str):
        super().__init__(megatron_param, hf_param, tp_dim=0)

    def hf_to_megatron(self, hf_weights: Tensor, ctx: MappingContext) -> Tensor:
        return deinterleave(hf_weights.transpose(0, 1)).contiguous()

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        return {self.hf_param: interleave(weight).transpose(0, 1).contiguous()}


class InterleavedGateUpBiasMapping(GatedSplit, FusedExpertMapping):
    """Expert ``linear_fc1.bias [2I]`` <-> slice ``[2I]`` of ``gate_up_proj_bias`` (gate = even entries)."""

    def __init__(self, megatron_param: str, hf_param: str):
        super().__init__(megatron_param, hf_param, tp_dim=0)

    def hf_to_megatron(self, hf_weights: Tensor, ctx: MappingContext) -> Tensor:
        return deinterleave(hf_weights)

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        return {self.hf_param: interleave(weight)}


class MXFP4ExpertMapping(FusedExpertMapping):
    """Expert weight <- slice ``[E]`` of an MXFP4 pair ``{name}_blocks``/``{name}_scales``, dequantized.

    ``gated``: ``gate_up_proj`` (rows interleaved gate/up, split per TP rank as gate and up). Export
    writes the bf16 layout, ``{name}`` (``[H, 2I]`` / ``[I, H]`` slices), as the bf16 mappings do.
    """

    def __init__(self, megatron_param: str, hf_name: str, *, gated: bool):
        hf = {"blocks": f"{hf_name}{MXFP4_MARK}", "scales": f"{hf_name}_scales"}
        super().__init__(megatron_param, hf, tp_dim=0 if gated else 1)
        self.hf_name, self.gated = hf_name, gated

    def hf_to_megatron(self, hf_weights: dict[str, Tensor], ctx: MappingContext) -> Tensor:
        weight = dequantize_mxfp4(hf_weights["blocks"], hf_weights["scales"], ctx.config.params_dtype)
        return deinterleave(weight) if self.gated else weight

    def megatron_to_hf(self, weight: Tensor, ctx: MappingContext) -> dict[str, Tensor]:
        out = interleave(weight) if self.gated else weight
        return {self.hf_name: out.transpose(0, 1).contiguous()}

    def split(self, full: Tensor, n: int) -> list[Tensor]:
        return split_gated(full, n) if self.gated else super().split(full, n)

    def merge(self, shards: list[Tensor]) -> Tensor:
        return merge_gated(shards) if self.gated else super().merge(shards)


def is_mxfp4(hf_names: Collection[str], hf_config: Any) -> bool:
    """Whether the source stores its experts as MXFP4 (``*_blocks`` tensors); a contradicting
    ``quantization_config`` is an error."""
    has_blocks = any(name.endswith(MXFP4_MARK) for name in hf_names)
    other = sorted(n for n in hf_names if n.endswith(OTHER_QUANT_SCALES))
    if other:  # the bridge declares that it dequantizes, so the engine leaves other formats to it
        raise ConfigError(f"the checkpoint holds {other[0]}: only MXFP4 quantization (*_blocks/*_scales) is supported")
    qconfig = getattr(hf_config, "quantization_config", None)
    method = None
    if qconfig is not None:
        method = qconfig.get("quant_method") if isinstance(qconfig, dict) else getattr(qconfig, "quant_method", None)
        method = getattr(method, "value", method)
    if method is not None and method != "mxfp4":
        raise ConfigError(f"config.json: quantization_config.quant_method={method!r} is not supported (mxfp4 only)")
    if has_blocks and method is None:
        raise ConfigError(
            "the checkpoint holds MXFP4 *_blocks tensors but config.json has no mxfp4 quantization_config"
        )
    if method == "mxfp4" and not has_blocks:
        raise ConfigError("config.json: quantization_config is mxfp4 but the checkpoint holds no *_blocks tensors")
    return has_blocks


def window_kwargs(hf_config: Any, num_layers: int) -> dict[str, Any]:
    """``window_size`` and the per-layer ``window_attn_skip_freq`` list (1 = windowed) from ``layer_types``."""
    types = list(getattr(hf_config, "layer_types", None) or [])
    if len(types) != num_layers or any(t not in LAYER_TYPES for t in types):
        raise ConfigError(
            f"config.json: layer_types={types!r} is not supported ({num_layers} entries of {', '.join(LAYER_TYPES)})"
        )
    pattern = [LAYER_TYPES[t] for t in types]
    if not any(pattern):
        return {"window_size": None, "window_attn_skip_freq": None}
    window = getattr(hf_config, "sliding_window", None)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"config.json: sliding_window={window!r} is not supported with sliding layers in layer_types")
    return {"window_size": (window - 1, 0), "window_attn_skip_freq": pattern}


def window_hf(provider: Any, default_window: Any) -> dict[str, Any]:
    """The inverse of ``window_kwargs``."""
    n, window, freq = provider.num_layers, provider.window_size, provider.window_attn_skip_freq
    if window is None:
        return {"layer_types": ["full_attention"] * n, "sliding_window": default_window}
    if window[1] != 0 or not isinstance(freq, list):
        raise ConfigError(f"window_size={tuple(window)} with window_attn_skip_freq={freq!r} has no GPT-OSS spelling")
    names = {v: k for k, v in LAYER_TYPES.items()}
    return {"sliding_window": int(window[0]) + 1, "layer_types": [names[int(bool(p))] for p in freq]}


def rope_kwargs(hf_config: Any) -> dict[str, Any]:
    """Provider RoPE settings: plain RoPE, or YaRN with megatron-core's ``yarn_*`` fields."""
    theta, scaling = read_rope(hf_config)
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "default" and set(scaling) <= {"rope_type"}:
        return {"position_embedding_type": "rope", "rotary_base": theta}
    extra = sorted(set(scaling) - YARN_KEYS)
    if rope_type != "yarn" or extra:
        shown = ", ".join(f"{k}={scaling[k]!r}" for k in extra) or f"rope_type={rope_type!r}"
        raise ConfigError(
            f"config.json: rope_parameters with {shown} is not supported (default or yarn without mscale)"
        )
    factor = scaling.get("factor")
    original = scaling.get("original_max_position_embeddings")
    if factor is None or original is None:
        raise ConfigError("config.json: yarn rope_parameters need factor and original_max_position_embeddings")
    return {
        "position_embedding_type": "yarn",
        "rotary_base": theta,
        "yarn_rotary_scaling_factor": float(factor),
        "yarn_original_max_position_embeddings": int(original),
        "yarn_beta_fast": float(scaling.get("beta_fast") or 32.0),  # transformers' defaults for unset betas
        "yarn_beta_slow": float(scaling.get("beta_slow") or 1.0),
        "yarn_correction_range_round_to_int": bool(scaling.get("truncate", True)),
    }


def rope_hf(provider: Any) -> dict[str, Any]:
    """The inverse of ``rope_kwargs``."""
    if provider.position_embedding_type != "yarn":
        return rope_to_hf(provider.rotary_base, None)
    scaling = {
        "rope_type": "yarn",
        "factor": provider.yarn_rotary_scaling_factor,
        "beta_fast": provider.yarn_beta_fast,
        "beta_slow": provider.yarn_beta_slow,
        "truncate": provider.yarn_correction_range_round_to_int,
        "original_max_position_embeddings": provider.yarn_original_max_position_embeddings,
    }
    return rope_to_hf(provider.rotary_base, scaling)


def quick_gelu_alpha(value: Any, hf_config: Any) -> bool:
    """1.702 (megatron-core's quick_gelu)"""
    return value is None or float(value) == QUICK_GELU_ALPHA


class GptOssBridge(DecoderBridge):
    """``GptOssForCausalLM`` (gpt-oss-20b, gpt-oss-120b), from bf16 or MXFP4 checkpoints.

    Refused with a clear error: rope types other than default and yarn (and yarn with mscale or
    attention_factor), ``swiglu_alpha`` other than 1.702, attention without biases, quantization other
    than MXFP4, expert tensor parallel sizes above 1.
    """

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        *DecoderBridge.CONFIG_MAPPING,
        ("num_local_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("router_aux_loss_coef", "moe_aux_loss_coeff"),
        ("swiglu_limit", "activation_func_clamp_value"),
    ]
    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"layer_types", "sliding_window", "quantization_config"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in DecoderBridge.SUPPORTED_HF_CONFIG.items() if k not in ("attention_bias", "layer_types")},
        "attention_bias": True,
        "swiglu_alpha": quick_gelu_alpha,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        **DecoderBridge.PROVIDER_DEFAULTS,
        **MOE_DEFAULTS,
        "add_bias_linear": True,
        "add_qkv_bias": True,
        "activation_func": quick_gelu,
        "glu_linear_offset": 1.0,
        "bias_activation_fusion": False,
        "softmax_type": "learnable",
    }
    PROVIDER_CLASS = GptOssProvider
    dequantizes_hf_weights = True  # MXFP4 experts (is_mxfp4 refuses any other quantization)

    mxfp4: bool = False

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = MegatronModelBridge.hf_config_to_provider_kwargs(self, hf_config)
        if kwargs.get("kv_channels") is None:
            kwargs["kv_channels"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
        kwargs.update(rope_kwargs(hf_config))
        kwargs.update(window_kwargs(hf_config, kwargs["num_layers"]))
        kwargs["moe_ffn_hidden_size"] = kwargs["ffn_hidden_size"]
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = MegatronModelBridge.megatron_to_hf_config(self, provider)
        out["num_key_value_heads"] = provider.num_query_groups or provider.num_attention_heads
        out["intermediate_size"] = provider.moe_ffn_hidden_size or provider.ffn_hidden_size
        out["swiglu_alpha"] = QUICK_GELU_ALPHA
        out.update(rope_hf(provider))
        source_window = getattr(self.hf_config, "sliding_window", None) if self.hf_config is not None else None
        out.update(window_hf(provider, source_window))
        return out

    # -- weights --------------------------------------------------------------------------------
    def select_hf_layout(self, model_config: Any, hf_names: Collection[str] | None) -> None:
        """Import: MXFP4 when the source holds ``*_blocks`` tensors; export: always bf16."""
        self.mxfp4 = hf_names is not None and is_mxfp4(hf_names, self.hf_config)

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [
            *super().attention_mappings(),
            ReplicatedMapping(
                "decoder.layers.*.self_attention.linear_proj.bias", "model.layers.*.self_attn.o_proj.bias"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.core_attention.softmax_offset", "model.layers.*.self_attn.sinks"
            ),
        ]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The pre-MLP norm, the router and the experts in the source's format."""
        if self.mxfp4:
            fc1_weight = MXFP4ExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                "model.layers.*.mlp.experts.gate_up_proj",
                gated=True,
            )
            fc2_weight = MXFP4ExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight",
                "model.layers.*.mlp.experts.down_proj",
                gated=False,
            )
        else:
            fc1_weight = InterleavedGateUpMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.weight",
                "model.layers.*.mlp.experts.gate_up_proj",
            )
            fc2_weight = FusedExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight",
                "model.layers.*.mlp.experts.down_proj",
                transpose=True,
            )
        return [
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"),
            ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.router.weight"),
            ReplicatedMapping("decoder.layers.*.mlp.router.bias", "model.layers.*.mlp.router.bias"),
            fc1_weight,
            InterleavedGateUpBiasMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc1.bias",
                "model.layers.*.mlp.experts.gate_up_proj_bias",
            ),
            fc2_weight,
            FusedExpertMapping(
                "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.bias",
                "model.layers.*.mlp.experts.down_proj_bias",
                tp_dim=None,
            ),
        ]
