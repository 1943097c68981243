"""The layer specs of OLMo-2 (post-norm, full-width QK-norm) and OLMoE (pre-norm MoE, full-width QK-norm).

Both start from megatron-core's local spec (CPU-capable; Transformer Engine's fused norm-linear
modules have no slot for these norms) and swap in this package's modules. A provider uses them
through ``layer_spec`` (``providers.py``).
"""

from __future__ import annotations

import copy
from typing import Any

from bridge_core.model.mcore_versions import mlp_submodules
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.transformer.identity_op import IdentityOp

from bridge_olmo.modeling_olmo.attention import FullWidthQKSelfAttention
from bridge_olmo.modeling_olmo.layers import PostNormRowParallelLinear


def _full_width_qk_norm(layer: Any, weight_first: bool) -> None:
    attention = layer.submodules.self_attention
    attention.module = FullWidthQKSelfAttention
    attention.params = {**attention.params, "weight_first": weight_first}
    # placeholders, replaced by FullWidthQKSelfAttention (megatron-core 0.19 refuses None with qk_layernorm)
    attention.submodules.q_layernorm = IdentityOp
    attention.submodules.k_layernorm = IdentityOp


def olmo2_layer_spec(provider: Any) -> Any:
    """OLMo-2's layer: no pre-norms, ``x + norm(attn(x))`` and ``x + norm(mlp(x))``, full-width QK-norm."""
    layer = copy.deepcopy(gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm"))
    subs = layer.submodules
    subs.input_layernorm = IdentityOp
    subs.pre_mlp_layernorm = IdentityOp
    subs.self_attention.submodules.linear_proj = PostNormRowParallelLinear
    mlp_submodules(subs.mlp).linear_fc2 = PostNormRowParallelLinear
    _full_width_qk_norm(layer, weight_first=True)
    return layer


def olmoe_block_spec(provider: Any, vp_stage: int | None = None) -> Any:
    """OLMoE's decoder block: the stock pre-norm MoE layers with full-width QK-norm."""
    block = copy.deepcopy(
        gpt_layer_specs.get_gpt_decoder_block_spec(
            provider, use_transformer_engine=False, normalization="RMSNorm", vp_stage=vp_stage
        )
    )
    for layer in block.layer_specs:
        _full_width_qk_norm(layer, weight_first=False)
    return block
