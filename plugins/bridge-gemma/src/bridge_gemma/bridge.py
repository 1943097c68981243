"""Gemma bridges: Hugging Face ``GemmaForCausalLM`` / ``Gemma2ForCausalLM`` <-> Megatron-Core GPT.

Gemma 1 adds to the stock decoder: zero-centred RMSNorms (stored as is), embeddings x sqrt(hidden),
GeGLU with the tanh GELU, tied embeddings, ``head_dim`` independent of ``hidden / heads``. Gemma 2
adds sandwich norms, ``query_pre_attn_scalar``, attention and final logit soft-capping and sliding
windows on the layers ``layer_types`` marks ``sliding_attention``. The modeling code is in
``bridge_gemma.modeling_gemma``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.errors import ConfigError
from bridge_core.mappings import AutoMapping, GatedMLPMapping, MegatronParamMapping, RowParallelMapping
from bridge_core.model.decoder import DecoderBridge
from bridge_gemma.modeling_gemma.provider import GemmaModelProvider

GELU_TANH = ("gelu_pytorch_tanh", "gelu")  # transformers reads Gemma's legacy "gelu" as the tanh GELU
LAYER_TYPES = {"sliding_attention": 1, "full_attention": 0}


def _gelu_tanh(value: Any, hf_config: Any) -> bool:
    """gelu_pytorch_tanh"""
    return value is None or value in GELU_TANH


def _causal(value: Any, hf_config: Any) -> bool:
    """null or false (causal attention)"""
    return not value


def _positive_or_null(config: Any, key: str) -> float | None:
    value = getattr(config, key, None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"config.json: {key}={value!r} is not supported (a positive number, or null)")
    return float(value)


class GemmaBridge(DecoderBridge):
    """``GemmaForCausalLM``: Gemma 2B, 7B (and CodeGemma, RecurrentGemma excluded)."""

    HANDLED_HF_CONFIG = DecoderBridge.HANDLED_HF_CONFIG | {"hidden_act", "hidden_activation"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "use_bidirectional_attention": _causal,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        k: v for k, v in DecoderBridge.PROVIDER_DEFAULTS.items() if k != "activation_func"
    } | {"share_embeddings_and_output_weights": True, "layernorm_zero_centered_gamma": True}
    PROVIDER_CLASS = GemmaModelProvider
    ACTIVATION_KEY: ClassVar[str] = "hidden_act"

    def check_hf_config(self, hf_config: Any) -> None:
        super().check_hf_config(hf_config)
        for key in ("hidden_act", "hidden_activation"):
            value = getattr(hf_config, key, None)
            if not _gelu_tanh(value, hf_config):
                raise ConfigError(f"config.json: {key}={value!r} is not supported by bridge-gemma (gelu_pytorch_tanh)")

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        del out["hidden_act"]
        out[self.ACTIVATION_KEY] = "gelu_pytorch_tanh"
        return out


class Gemma2Bridge(GemmaBridge):
    """``Gemma2ForCausalLM``: Gemma 2 2B, 9B, 27B."""

    HANDLED_HF_CONFIG = GemmaBridge.HANDLED_HF_CONFIG | {
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "sliding_window",
        "layer_types",
    }
    ACTIVATION_KEY = "hidden_activation"

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        scalar = _positive_or_null(hf_config, "query_pre_attn_scalar")
        if scalar is None:
            raise ConfigError("config.json: query_pre_attn_scalar=None is not supported (a positive number)")
        kwargs["softmax_scale"] = scalar**-0.5
        kwargs["attn_logit_softcap"] = _positive_or_null(hf_config, "attn_logit_softcapping")
        kwargs["final_logit_softcap"] = _positive_or_null(hf_config, "final_logit_softcapping")
        kwargs["sandwich_norms"] = True
        kwargs.update(window_kwargs(hf_config, kwargs["num_layers"]))
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        scalar = provider.softmax_scale**-2
        out["query_pre_attn_scalar"] = round(scalar) if abs(scalar - round(scalar)) < 1e-6 else scalar
        out["attn_logit_softcapping"] = provider.attn_logit_softcap
        out["final_logit_softcapping"] = provider.final_logit_softcap
        out.update(window_hf(provider))
        return out

    def attention_mappings(self) -> list[MegatronParamMapping]:
        post = AutoMapping(
            "decoder.layers.*.self_attention.linear_proj.post_layernorm.weight",
            "model.layers.*.post_attention_layernorm.weight",
        )
        return [*super().attention_mappings(), post]

    def mlp_mappings(self) -> list[MegatronParamMapping]:
        """The stock MLP with Gemma 2's sandwich norms (its ``post_attention_layernorm`` follows the attention)."""
        return [
            GatedMLPMapping(
                "decoder.layers.*.mlp.linear_fc1.weight",
                "model.layers.*.mlp.gate_proj.weight",
                "model.layers.*.mlp.up_proj.weight",
            ),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight"),
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.pre_feedforward_layernorm.weight"),
            AutoMapping(
                "decoder.layers.*.mlp.linear_fc2.post_layernorm.weight",
                "model.layers.*.post_feedforward_layernorm.weight",
            ),
        ]


class _GlobalRopeView:
    """``hf_config`` with ``rope_parameters`` narrowed to the global (``full_attention``) layers' entry."""

    def __init__(self, hf_config: Any, rope_parameters: dict[str, Any]):
        self._config, self.rope_parameters = hf_config, rope_parameters

    def __getattr__(self, name: str) -> Any:
        return getattr(self._config, name)


def dual_rope(hf_config: Any) -> tuple[dict[str, Any], float]:
    """Gemma 3's ``rope_parameters``: the global layers' entry and the local layers' base."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    glob, local = params.get("full_attention"), params.get("sliding_attention")
    if not isinstance(glob, dict) or not isinstance(local, dict):
        raise ConfigError(
            f"config.json: rope_parameters={params!r} is not supported (full_attention and sliding_attention entries)"
        )
    if local.get("rope_type", "default") != "default":
        raise ConfigError(
            f"config.json: rope_parameters.sliding_attention.rope_type={local.get('rope_type')!r} is not supported "
            "(default only)"
        )
    return glob, float(local["rope_theta"])


class Gemma3Bridge(Gemma2Bridge):
    """``Gemma3ForCausalLM`` (text): Gemma 3 1B, and the text towers of 4B/12B/27B saved as this class."""

    # The Hub's configs still carry the old ``sliding_window_pattern``: transformers derives
    # ``layer_types`` from it (when absent), and ``layer_types`` is what the windows are read from.
    HANDLED_HF_CONFIG = Gemma2Bridge.HANDLED_HF_CONFIG | {"sliding_window_pattern"}

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        glob, local = dual_rope(hf_config)
        kwargs = super().hf_config_to_provider_kwargs(_GlobalRopeView(hf_config, glob))
        kwargs.update({"qk_layernorm": True, "local_rotary_base": local})
        return kwargs

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        local = {"rope_type": "default", "rope_theta": provider.local_rotary_base}
        out["rope_parameters"] = {"full_attention": out["rope_parameters"], "sliding_attention": local}
        return out

    def attention_mappings(self) -> list[MegatronParamMapping]:
        return [
            *super().attention_mappings(),
            AutoMapping("decoder.layers.*.self_attention.q_layernorm.weight", "model.layers.*.self_attn.q_norm.weight"),
            AutoMapping("decoder.layers.*.self_attention.k_layernorm.weight", "model.layers.*.self_attn.k_norm.weight"),
        ]


def window_kwargs(hf_config: Any, num_layers: int) -> dict[str, Any]:
    """``window_size`` and the per-layer ``window_attn_skip_freq`` list (1 = windowed) from ``layer_types``."""
    types = getattr(hf_config, "layer_types", None)
    if types is None:  # transformers' Gemma 2 default: even layers (0-based) windowed
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(num_layers)]
    unknown = sorted({t for t in types if t not in LAYER_TYPES}, key=str)
    if unknown or len(types) != num_layers:
        raise ConfigError(
            f"config.json: layer_types={list(types)!r} is not supported "
            f"({num_layers} entries of {', '.join(LAYER_TYPES)})"
        )
    pattern = [LAYER_TYPES[t] for t in types]
    window = getattr(hf_config, "sliding_window", None)
    if not any(pattern):
        return {"window_size": None, "window_attn_skip_freq": None}
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"config.json: sliding_window={window!r} is not supported with sliding layers in layer_types")
    return {"window_size": (window - 1, 0), "window_attn_skip_freq": pattern}


def window_hf(provider: Any) -> dict[str, Any]:
    """The inverse of ``window_kwargs``: ``sliding_window`` and ``layer_types``."""
    n, window, freq = provider.num_layers, provider.window_size, provider.window_attn_skip_freq
    if window is None:
        return {"layer_types": ["full_attention"] * n}
    if window[1] != 0:
        raise ConfigError(f"window_size={tuple(window)} cannot be written as config.json sliding_window (causal only)")
    if freq is None:
        pattern = [1] * n
    elif isinstance(freq, int):
        pattern = [int(i % freq != 0) for i in range(1, n + 1)]
    else:
        pattern = list(freq)
    names = {v: k for k, v in LAYER_TYPES.items()}
    return {"sliding_window": int(window[0]) + 1, "layer_types": [names[int(bool(p))] for p in pattern]}
