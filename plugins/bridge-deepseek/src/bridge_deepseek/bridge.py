"""DeepSeek-V3 and DeepSeek-V2 bridges: Hugging Face <-> Megatron-Core GPT with MLA and MoE.

Attention is multi-latent (megatron-core's ``MLASelfAttention``): q/kv down- and up-projections and
their norms are copied without re-layout (megatron-core de-interleaves the rope dimensions as HF's
``rope_interleave=True`` does; V2's complex rotation is the same dot product). The first
``first_k_dense_replace`` layers are dense, the rest MoE with shared experts. V3 routes by sigmoid
with ``e_score_correction_bias`` (-> ``router.expert_bias``), group-limited top-k and renormalised
weights scaled by ``routed_scaling_factor``; V2 by softmax over all experts, top-k, no
renormalisation. What megatron-core's router cannot reproduce exactly is refused, naming the keys.
FP8 sources (128x128 blocks with ``weight_scale_inv``) are dequantized on import. MTP layers
(``num_nextn_predict_layers``, HF layers ``L..L+n-1``) convert both ways into megatron-core's MTP block.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from bridge_core.errors import ConfigError
from bridge_core.mappings import (
    AutoMapping,
    FusedExpertMapping,
    FusedGatedExpertMapping,
    GatedMLPMapping,
    MegatronParamMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)
from bridge_core.model.bridge import MegatronModelBridge
from bridge_core.model.config_translation import dtype_name, parse_dtype, read_rope, rope_to_hf
from bridge_core.model.mapping_registry import MegatronMappingRegistry
from bridge_core.model.quantization import dequantize_fp8_blockwise

from bridge_deepseek.mappings import MAIN, VocabCopiesMapping
from bridge_deepseek.provider import DeepseekProvider

PER_EXPERT, FUSED = "per_expert", "fused"
FUSED_MARK = ".mlp.experts.gate_up_proj"
SCALE_SUFFIX = "_scale_inv"
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# megatron-core's MoE settings that run on the local layer spec and on CPUs (FAMILIES.md §3.6).
MOE_DEFAULTS: dict[str, Any] = {
    "moe_router_dtype": "fp32",
    "moe_grouped_gemm": False,
    "moe_token_dispatcher_type": "allgather",
    "moe_permute_fusion": False,
    "moe_router_fusion": False,
    "moe_router_load_balancing_type": "seq_aux_loss",
}

YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


def expert_layout(hf_names: Collection[str]) -> str:
    """``"fused"`` when the checkpoint stacks its experts (``mlp.experts.gate_up_proj``), else ``"per_expert"``."""
    return FUSED if any(name.endswith(FUSED_MARK) for name in hf_names) else PER_EXPERT


def _pinned(mapping: MegatronParamMapping, dtype: torch.dtype) -> MegatronParamMapping:
    """``mapping`` exported in ``dtype`` whatever the export's (the router's fp32 tensors of a bf16 checkpoint)."""
    mapping.hf_dtype = dtype
    return mapping


def at_layer(mappings: list[MegatronParamMapping], megatron_layer: str, hf_layer: str) -> list[MegatronParamMapping]:
    """A decoder layer's ``mappings`` at one concrete layer: ``decoder.layers.*.`` becomes ``megatron_layer``
    and ``model.layers.*.`` ``hf_layer`` (the expert ``*`` stays)."""
    return [
        m.renamed(
            m.megatron_param.replace("decoder.layers.*.", megatron_layer, 1),
            lambda name: name.replace("model.layers.*.", hf_layer, 1),
        )
        for m in mappings
    ]


def mla_rope_kwargs(hf_config: Any) -> dict[str, Any]:
    """MLA rope settings: plain rope, or YaRN with the config's mscale/mscale_all_dim (else an error)."""
    theta, scaling = read_rope(hf_config)
    rope_type = scaling.get("rope_type", "default")
    kwargs: dict[str, Any] = {"rotary_base": theta, "position_embedding_type": "rope"}
    if rope_type == "default":
        return {**kwargs, "rope_type": "rope", "rotary_scaling_factor": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    if rope_type != "yarn":
        raise ConfigError(f"config.json: rope_parameters.rope_type={rope_type!r} is not supported (default, yarn)")
    extra = sorted(set(scaling) - {"rope_type", *YARN_KEYS})
    if extra:
        shown = ", ".join(f"{k}={scaling[k]!r}" for k in extra)
        raise ConfigError(f"config.json: yarn rope_parameters {shown} are not supported (megatron-core ignores them)")
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale_all_dim and not mscale:
        raise ConfigError(
            f"config.json: yarn rope_parameters.mscale_all_dim={mscale_all_dim!r} without mscale is not supported "
            "(transformers then ignores mscale_all_dim in the rotary scale but not in the softmax scale)"
        )
    if not mscale_all_dim:
        mscale, mscale_all_dim = 1.0, 0.0  # transformers ignores mscale then
    original = scaling.get("original_max_position_embeddings") or hf_config.max_position_embeddings
    return {
        **kwargs,
        "rope_type": "yarn",
        "rotary_scaling_factor": float(scaling["factor"]),
        "original_max_position_embeddings": int(original),
        "beta_fast": float(scaling.get("beta_fast", 32)),
        "beta_slow": float(scaling.get("beta_slow", 1)),
        "mscale": float(mscale),
        "mscale_all_dim": float(mscale_all_dim),
    }


def mla_rope_to_hf(provider: Any) -> dict[str, Any]:
    """The inverse of ``mla_rope_kwargs``."""
    if provider.rope_type == "rope":
        return rope_to_hf(provider.rotary_base, None)
    scaling = {
        "rope_type": "yarn",
        "factor": provider.rotary_scaling_factor,
        "original_max_position_embeddings": provider.original_max_position_embeddings,
        "beta_fast": provider.beta_fast,
        "beta_slow": provider.beta_slow,
        "mscale": provider.mscale,
        "mscale_all_dim": provider.mscale_all_dim,
    }
    return rope_to_hf(provider.rotary_base, scaling)


def _equals_heads(value: Any, hf_config: Any) -> bool:
    """num_attention_heads (MLA has one latent shared by all heads)"""
    return value is None or value == hf_config.num_attention_heads


def _rope_head_dim(value: Any, hf_config: Any) -> bool:
    """qk_rope_head_dim (derived by transformers)"""
    return value is None or value == hf_config.qk_rope_head_dim


def _qk_head_dim(value: Any, hf_config: Any) -> bool:
    """qk_nope_head_dim + qk_rope_head_dim (derived by transformers)"""
    return value is None or value == hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim


class DeepseekBridge(MegatronModelBridge):
    """What DeepSeek-V2 and V3 share: MLA, first-k dense layers, shared experts, MTP layers, FP8 sources."""

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = [
        ("num_hidden_layers", "num_layers"),
        ("hidden_size", "hidden_size"),
        ("intermediate_size", "ffn_hidden_size"),
        ("num_attention_heads", "num_attention_heads"),
        ("rms_norm_eps", "layernorm_epsilon"),
        ("vocab_size", "vocab_size"),
        ("max_position_embeddings", "seq_length"),
        ("tie_word_embeddings", "share_embeddings_and_output_weights"),
        ("attention_dropout", "attention_dropout"),
        ("initializer_range", "init_method_std"),
        ("moe_intermediate_size", "moe_ffn_hidden_size"),
        ("n_routed_experts", "num_moe_experts"),
        ("num_experts_per_tok", "moe_router_topk"),
        ("kv_lora_rank", "kv_lora_rank"),
        ("qk_nope_head_dim", "qk_head_dim"),
        ("qk_rope_head_dim", "qk_pos_emb_head_dim"),
        ("v_head_dim", "v_head_dim"),
        ("routed_scaling_factor", "moe_router_topk_scaling_factor"),
    ]
    HANDLED_HF_CONFIG = frozenset(
        {
            "rope_parameters",
            "rope_theta",
            "rope_scaling",
            "q_lora_rank",
            "first_k_dense_replace",
            "n_shared_experts",
            "n_group",
            "topk_group",
            "num_nextn_predict_layers",
            "quantization_config",
        }
    )
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "num_key_value_heads": _equals_heads,
        "head_dim": _rope_head_dim,
        "qk_head_dim": _qk_head_dim,
    }
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {
        "normalization": "RMSNorm",
        "gated_linear_unit": True,
        "activation_func": F.silu,
        "add_bias_linear": False,
        "add_qkv_bias": False,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "share_embeddings_and_output_weights": False,
        "multi_latent_attention": True,
        "qk_layernorm": True,  # the q_a/kv_a norms (FAMILIES.md §12: required)
        **MOE_DEFAULTS,
    }
    PROVIDER_CLASS = DeepseekProvider
    FLOPS_DECODER_LAYER = "deepseek_decoder_layer"  # registered in plugin.py (bridge_deepseek.flops)
    dequantizes_hf_weights: ClassVar[bool] = True

    # set by select_hf_layout from the model's provider
    layout: str = PER_EXPERT
    mtp_layers: int = 0
    head_copies: bool = False
    num_layers: int = 0
    router_dtype: torch.dtype = torch.float32
    expert_bias_dtype: torch.dtype = torch.float32

    # -- config ---------------------------------------------------------------------------------
    def provider_bridge(self, hf_pretrained: Any) -> DeepseekProvider:
        provider = super().provider_bridge(hf_pretrained)
        declared = provider.mtp_num_layers or 0
        if declared and not self._checkpoint_has_mtp(hf_pretrained, provider.num_layers):
            provider.mtp_num_layers = None  # transformers saves no MTP weights; the config still declares them
        provider.hf_num_nextn_predict_layers = declared
        first_moe = provider.moe_layer_freq.index(1)
        gate = f"model.layers.{first_moe}.mlp.gate."
        provider.hf_router_dtype = self._source_dtype(hf_pretrained, gate + "weight")
        provider.hf_expert_bias_dtype = self._source_dtype(hf_pretrained, gate + "e_score_correction_bias")
        return provider

    @staticmethod
    def _source_dtype(hf_pretrained: Any, name: str) -> str:
        """The dtype name of ``name`` in the source; fp32 (transformers' choice for router tensors) if unknown."""
        try:
            dtype = hf_pretrained.weights.meta[name].dtype
        except Exception:
            return "float32"
        return dtype_name(dtype) if isinstance(dtype, torch.dtype) and dtype.is_floating_point else "float32"

    @staticmethod
    def _checkpoint_has_mtp(hf_pretrained: Any, num_layers: int) -> bool:
        """Whether the source holds HF layer ``num_layers`` (the first MTP layer); True without weights."""
        try:
            names = hf_pretrained.weights.meta
        except Exception:
            return True
        prefix = f"model.layers.{num_layers}."
        return any(name.startswith(prefix) for name in names)

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs.update(mla_rope_kwargs(hf_config))
        kwargs["num_query_groups"] = kwargs["num_attention_heads"]
        kwargs["q_lora_rank"] = hf_config.q_lora_rank
        layers, dense = kwargs["num_layers"], hf_config.first_k_dense_replace or 0
        if dense >= layers:
            raise ConfigError(f"config.json: first_k_dense_replace={dense} leaves no MoE layer of {layers}")
        kwargs["moe_layer_freq"] = [0] * dense + [1] * (layers - dense)
        shared = hf_config.n_shared_experts or 0
        kwargs["moe_shared_expert_intermediate_size"] = hf_config.moe_intermediate_size * shared if shared else None
        kwargs["mtp_num_layers"] = getattr(hf_config, "num_nextn_predict_layers", 0) or None
        kwargs.update(self.router_kwargs(hf_config))
        return kwargs

    def router_kwargs(self, hf_config: Any) -> dict[str, Any]:
        raise NotImplementedError

    def megatron_to_hf_config(self, provider: Any) -> dict[str, Any]:
        out = super().megatron_to_hf_config(provider)
        out.update(mla_rope_to_hf(provider))
        out["num_key_value_heads"] = provider.num_attention_heads
        out["q_lora_rank"] = provider.q_lora_rank
        out["hidden_act"] = "silu"
        out["first_k_dense_replace"] = list(provider.moe_layer_freq).index(1)
        shared = provider.moe_shared_expert_intermediate_size or 0
        out["n_shared_experts"] = shared // provider.moe_ffn_hidden_size
        declared = getattr(provider, "hf_num_nextn_predict_layers", None)
        out["num_nextn_predict_layers"] = provider.mtp_num_layers or declared or 0
        out.update(self.router_to_hf(provider))
        return out

    def router_to_hf(self, provider: Any) -> dict[str, Any]:
        raise NotImplementedError

    # -- weights --------------------------------------------------------------------------------
    def select_hf_layout(self, model_config: Any, hf_names: Collection[str] | None) -> None:
        if hf_names is not None:
            model_config.hf_expert_layout = expert_layout(hf_names)
            first_mtp = f"model.layers.{model_config.num_layers}."
            model_config.hf_mtp_head_copies = f"{first_mtp}embed_tokens.weight" in hf_names
        layout = getattr(model_config, "hf_expert_layout", PER_EXPERT)
        if layout not in (PER_EXPERT, FUSED):
            raise ConfigError(f"hf_expert_layout={layout!r} in the model settings (expected 'per_expert' or 'fused')")
        self.layout = layout
        self.mtp_layers = getattr(model_config, "mtp_num_layers", None) or 0
        self.num_layers = model_config.num_layers
        self.head_copies = bool(getattr(model_config, "hf_mtp_head_copies", False)) and self.mtp_layers > 0
        self.router_dtype = parse_dtype(getattr(model_config, "hf_router_dtype", "float32"))
        self.expert_bias_dtype = parse_dtype(getattr(model_config, "hf_expert_bias_dtype", "float32"))

    def layer_mappings(self) -> list[MegatronParamMapping]:
        """A decoder layer's mappings (``*``: the layer, then the expert index): attention, the dense MLP
        of the first layers, the router, shared and routed experts of the others."""
        mappings: list[MegatronParamMapping] = [
            AutoMapping("decoder.layers.*.input_layernorm.weight", "model.layers.*.input_layernorm.weight"),
            AutoMapping(
                "decoder.layers.*.self_attention.linear_q_proj.weight", "model.layers.*.self_attn.q_proj.weight"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.linear_q_down_proj.weight", "model.layers.*.self_attn.q_a_proj.weight"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.q_layernorm.weight", "model.layers.*.self_attn.q_a_layernorm.weight"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.linear_q_up_proj.weight", "model.layers.*.self_attn.q_b_proj.weight"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.linear_kv_down_proj.weight",
                "model.layers.*.self_attn.kv_a_proj_with_mqa.weight",
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.kv_layernorm.weight", "model.layers.*.self_attn.kv_a_layernorm.weight"
            ),
            AutoMapping(
                "decoder.layers.*.self_attention.linear_kv_up_proj.weight", "model.layers.*.self_attn.kv_b_proj.weight"
            ),
            RowParallelMapping(
                "decoder.layers.*.self_attention.linear_proj.weight", "model.layers.*.self_attn.o_proj.weight"
            ),
            AutoMapping("decoder.layers.*.pre_mlp_layernorm.weight", "model.layers.*.post_attention_layernorm.weight"),
            # dense layers
            GatedMLPMapping(
                "decoder.layers.*.mlp.linear_fc1.weight",
                "model.layers.*.mlp.gate_proj.weight",
                "model.layers.*.mlp.up_proj.weight",
            ),
            RowParallelMapping("decoder.layers.*.mlp.linear_fc2.weight", "model.layers.*.mlp.down_proj.weight"),
            # MoE layers: router, shared experts, routed experts
            _pinned(
                ReplicatedMapping("decoder.layers.*.mlp.router.weight", "model.layers.*.mlp.gate.weight"),
                self.router_dtype,
            ),
            _pinned(
                ReplicatedMapping(
                    "decoder.layers.*.mlp.router.expert_bias", "model.layers.*.mlp.gate.e_score_correction_bias"
                ),
                self.expert_bias_dtype,
            ),
            GatedMLPMapping(
                "decoder.layers.*.mlp.shared_experts.linear_fc1.weight",
                "model.layers.*.mlp.shared_experts.gate_proj.weight",
                "model.layers.*.mlp.shared_experts.up_proj.weight",
            ),
            RowParallelMapping(
                "decoder.layers.*.mlp.shared_experts.linear_fc2.weight",
                "model.layers.*.mlp.shared_experts.down_proj.weight",
            ),
        ]
        if self.layout == FUSED:
            return [
                *mappings,
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
            *mappings,
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

    def mtp_mappings(self) -> list[MegatronParamMapping]:
        """MTP layer ``i`` <- HF layer ``num_layers + i``: its norms, ``eh_proj``, final norm, and its inner
        layer: the decoder layer's table at that layer (``at_layer``)."""
        out: list[MegatronParamMapping] = []
        for i in range(self.mtp_layers):
            mg, hf = f"mtp.layers.{i}.", f"model.layers.{self.num_layers + i}."
            out += [
                AutoMapping(f"{mg}enorm.weight", f"{hf}enorm.weight"),
                AutoMapping(f"{mg}hnorm.weight", f"{hf}hnorm.weight"),
                AutoMapping(f"{mg}eh_proj.weight", f"{hf}eh_proj.weight"),
                AutoMapping(f"{mg}final_layernorm.weight", f"{hf}shared_head.norm.weight"),
                # the inner layer: megatron-core 0.16's name, and 0.19's
                *at_layer(self.layer_mappings(), f"{mg}transformer_layer.", hf),
                *at_layer(self.layer_mappings(), f"{mg}mtp_model_layer.", hf),
            ]
        return out

    def vocab_mappings(self) -> list[MegatronParamMapping]:
        """Embedding and output layer, with the MTP layers' copies of them when the source has those."""
        if not self.head_copies:
            return [
                VocabParallelMapping("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
                VocabParallelMapping("output_layer.weight", "lm_head.weight"),
            ]
        mtp = [f"model.layers.{self.num_layers + i}." for i in range(self.mtp_layers)]
        return [
            VocabCopiesMapping(
                "embedding.word_embeddings.weight",
                {
                    MAIN: "model.embed_tokens.weight",
                    **{f"copy{i}": f"{m}embed_tokens.weight" for i, m in enumerate(mtp)},
                },
            ),
            VocabCopiesMapping(
                "output_layer.weight",
                {MAIN: "lm_head.weight", **{f"copy{i}": f"{m}shared_head.head.weight" for i, m in enumerate(mtp)}},
            ),
        ]

    def mapping_registry(self) -> MegatronMappingRegistry:
        return MegatronMappingRegistry(
            *self.vocab_mappings(),
            ReplicatedMapping("decoder.final_layernorm.weight", "model.norm.weight"),
            *self.layer_mappings(),
            *self.mtp_mappings(),
        )

    # -- FP8 sources ----------------------------------------------------------------------------
    def fp8_block(self) -> tuple[int, int]:
        qconfig = getattr(self.hf_config, "quantization_config", None) or {}
        if not isinstance(qconfig, Mapping):
            qconfig = qconfig.to_dict()
        block = qconfig.get("weight_block_size") or (128, 128)
        if len(block) != 2:
            raise ConfigError(f"config.json: quantization_config.weight_block_size={block!r} (expected [rows, cols])")
        return int(block[0]), int(block[1])

    def _read(self, name: str, hf_state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tensor = hf_state_dict[name]
        if tensor.dtype not in FP8_DTYPES:
            return tensor
        scale_name = re.sub(r"\.weight$", ".weight" + SCALE_SUFFIX, name)
        try:
            scale = hf_state_dict[scale_name]
        except KeyError:
            raise ConfigError(f"{name} is {tensor.dtype} but the checkpoint has no {scale_name}") from None
        return dequantize_fp8_blockwise(tensor, scale, self.fp8_block(), dtype=torch.bfloat16)

    def maybe_modify_loaded_hf_weight(
        self, hf_param: str | dict[str, str], hf_state_dict: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Read the tensor(s) of a mapping, dequantizing FP8 block weights with their ``weight_scale_inv``."""
        if isinstance(hf_param, str):
            return self._read(hf_param, hf_state_dict)
        return {role: self._read(name, hf_state_dict) for role, name in hf_param.items()}


def _groups_exact(hf_config: Any) -> bool:
    """Whether megatron-core's group scores (sum of each group's top topk/topk_group) are HF's (sum of top 2)."""
    groups, chosen, topk = hf_config.n_group or 1, hf_config.topk_group or 1, hf_config.num_experts_per_tok
    return groups == 1 or chosen >= groups or (topk % chosen == 0 and topk // chosen == 2)


class DeepseekV3Bridge(DeepseekBridge):
    """``DeepseekV3ForCausalLM`` (DeepSeek-V3, V3.1, R1; Moonlight, Kimi-K2 share the architecture).

    Refused: ``norm_topk_prob=False`` (megatron-core renormalises sigmoid top-k), ``rope_interleave=False``,
    and group-limited routing other than ``num_experts_per_tok / topk_group == 2``.
    """

    HANDLED_HF_CONFIG = DeepseekBridge.HANDLED_HF_CONFIG | {"norm_topk_prob"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {**DeepseekBridge.SUPPORTED_HF_CONFIG, "rope_interleave": True}

    def router_kwargs(self, hf_config: Any) -> dict[str, Any]:
        if not hf_config.norm_topk_prob:
            raise ConfigError(
                "config.json: norm_topk_prob=false is not supported for DeepseekV3ForCausalLM "
                "(megatron-core always renormalises sigmoid top-k weights)"
            )
        if not _groups_exact(hf_config):
            raise ConfigError(
                f"config.json: n_group={hf_config.n_group}, topk_group={hf_config.topk_group}, "
                f"num_experts_per_tok={hf_config.num_experts_per_tok} is not supported: megatron-core scores a group "
                "by its top num_experts_per_tok/topk_group experts, transformers by its top 2 (exact only when that "
                "ratio is 2)"
            )
        groups = hf_config.n_group or 1
        grouped = 1 < groups and (hf_config.topk_group or groups) < groups
        return {
            "moe_router_score_function": "sigmoid",
            "moe_router_pre_softmax": False,
            "moe_router_enable_expert_bias": True,
            "moe_aux_loss_coeff": 1e-4,
            "moe_router_num_groups": groups if grouped else None,
            "moe_router_group_topk": hf_config.topk_group if grouped else None,
            "hf_n_group": hf_config.n_group,
            "hf_topk_group": hf_config.topk_group,
        }

    def router_to_hf(self, provider: Any) -> dict[str, Any]:
        return {
            "norm_topk_prob": True,
            "n_group": getattr(provider, "hf_n_group", None) or provider.moe_router_num_groups or 1,
            "topk_group": getattr(provider, "hf_topk_group", None) or provider.moe_router_group_topk or 1,
            "rope_interleave": True,
        }


class DeepseekV2Bridge(DeepseekBridge):
    """``DeepseekV2ForCausalLM`` (DeepSeek-V2-Lite, V2, V2.5, Coder-V2).

    Refused: ``topk_method="group_limited_greedy"`` with groups that bind (V2 and V2.5: each group
    scored by its best expert, which megatron-core's router cannot express), ``norm_topk_prob=True``
    (transformers' V2 ignores it; the original code renormalises).
    """

    HANDLED_HF_CONFIG = DeepseekBridge.HANDLED_HF_CONFIG | {"topk_method"}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {**DeepseekBridge.SUPPORTED_HF_CONFIG, "norm_topk_prob": False}

    def router_kwargs(self, hf_config: Any) -> dict[str, Any]:
        method, groups, chosen = hf_config.topk_method, hf_config.n_group or 1, hf_config.topk_group or 1
        if method not in ("greedy", "group_limited_greedy"):
            raise ConfigError(f"config.json: topk_method={method!r} is not supported (greedy, group_limited_greedy)")
        if method == "group_limited_greedy" and 1 < groups and chosen < groups:
            raise ConfigError(
                f"config.json: topk_method='group_limited_greedy' with n_group={groups}, topk_group={chosen} is not "
                "supported: megatron-core's router cannot score a group by its best expert (V2-Lite's greedy is)"
            )
        return {
            "moe_router_score_function": "softmax",
            "moe_router_pre_softmax": True,
            "moe_router_enable_expert_bias": False,
            "moe_aux_loss_coeff": 1e-3,
            "hf_n_group": hf_config.n_group,
            "hf_topk_group": hf_config.topk_group,
            "hf_topk_method": method,
        }

    def router_to_hf(self, provider: Any) -> dict[str, Any]:
        return {
            "topk_method": getattr(provider, "hf_topk_method", "greedy"),
            "n_group": getattr(provider, "hf_n_group", None),
            "topk_group": getattr(provider, "hf_topk_group", None),
            "norm_topk_prob": False,
        }
