"""DeepSeek-V2/V3 decoder and MTP block specs on megatron-core's local modules.

megatron-core's own local block spec already builds MLA layers, first-k dense layers
(``moe_layer_freq``) and shared experts; this swaps in the core attention MLA can build on
(``MLADotProductAttention``) and the router whose expert bias converts (``ExpertBiasRouter``), and
works around megatron-core 0.16 taking Transformer Engine as present in ``multi_latent_attention``
when it is not (its ``isinstance(..., TELinear)`` checks then raise).
"""

from __future__ import annotations

import copy
from typing import Any

from bridge_core.model.mcore_versions import mlp_submodules
from megatron.core.models.gpt import gpt_layer_specs
from megatron.core.transformer import multi_latent_attention
from megatron.core.transformer.identity_op import IdentityOp

from bridge_deepseek.modeling_deepseek.attention import DeepseekMLASelfAttention, MLADotProductAttention
from bridge_deepseek.modeling_deepseek.router import ExpertBiasRouter


def _fix_mla_without_te() -> None:
    """``multi_latent_attention.HAVE_TE`` is True in megatron-core 0.16 whenever its TE wrapper module
    imports, Transformer Engine or not; with ``TELinear = None`` the module's isinstance checks raise."""
    if getattr(multi_latent_attention, "TELinear", None) is None or not _te_importable():
        multi_latent_attention.HAVE_TE = False


def _te_importable() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def _patch_layer(layer: Any, provider: Any) -> None:
    attention = layer.submodules.self_attention
    attention.module = DeepseekMLASelfAttention
    attention.submodules.core_attention = MLADotProductAttention
    if provider.q_lora_rank is None:  # no q norm without q-LoRA (megatron-core 0.19 refuses a norm it would not use)
        attention.submodules.q_layernorm = IdentityOp
    mlp = mlp_submodules(layer.submodules.mlp)  # a ModuleSpec in megatron-core 0.16, a partial in 0.19
    if hasattr(mlp, "router"):
        mlp.router = ExpertBiasRouter


def decoder_block_spec(provider: Any, vp_stage: int | None = None) -> Any:
    """This stage's decoder block: megatron-core's local MLA/MoE layers with this package's modules."""
    _fix_mla_without_te()
    block = copy.deepcopy(
        gpt_layer_specs.get_gpt_decoder_block_spec(
            provider, use_transformer_engine=False, normalization="RMSNorm", vp_stage=vp_stage
        )
    )
    for layer in block.layer_specs:
        _patch_layer(layer, provider)
    return block


def mtp_block_spec(provider: Any, vp_stage: int | None = None) -> Any:
    """The multi-token-prediction block of this stage (None where it holds no MTP layer).

    Each MTP layer's inner layer is a full MoE layer, as the last decoder layer (DeepSeek-V3).
    """
    if not provider.mtp_num_layers:
        return None
    _fix_mla_without_te()
    layers = gpt_layer_specs.get_gpt_decoder_layer_specs(
        provider, use_transformer_engine=False, normalization="RMSNorm"
    )
    last = copy.deepcopy(layers[-1])
    _patch_layer(last, provider)
    return gpt_layer_specs.get_gpt_mtp_block_spec(provider, last, use_transformer_engine=False, vp_stage=vp_stage)
