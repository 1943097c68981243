"""The local core attention MLA can build on, and DeepSeek's MLA self-attention.

``MLADotProductAttention``: megatron-core's local ``DotProductAttention`` for multi-latent attention.

MLA builds its core attention with ``k_channels`` (nope + rope head size) and ``v_channels`` (the value
head size), which the local module (megatron-core 0.16-0.19) does not accept; its output is sized by
``kv_channels``. This one takes both and sizes its output by ``v_channels`` per head.
"""

from __future__ import annotations

from typing import Any

from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.multi_latent_attention import MLASelfAttention


class MLADotProductAttention(DotProductAttention):
    """``DotProductAttention`` whose output is ``v_channels`` per head (MLA's value head size)."""

    def __init__(self, *args: Any, k_channels: int | None = None, v_channels: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if v_channels is not None:
            self.hidden_size_per_partition = v_channels * self.num_attention_heads_per_partition


class DeepseekMLASelfAttention(MLASelfAttention):
    """``MLASelfAttention`` whose q and kv norms are the spec's standalone modules, as DeepSeek has them.

    megatron-core 0.19 resolves MLA's norms itself (``_resolve_qk_norm_config``): without q-LoRA
    (DeepSeek-V2-Lite) it insists on a norm fused into ``linear_q_proj``, which DeepSeek does not have
    (its only norms are ``kv_a_layernorm`` and, with q-LoRA, ``q_a_layernorm``). Here the spec's modules
    are used as they are: a plain ``linear_q_proj``, no q norm, the standalone kv norm. megatron-core
    0.16 has no such resolution and builds the same modules.
    """

    def _resolve_qk_norm_config(self, submodules: Any) -> dict[str, Any]:
        if self.config.q_lora_rank is not None:
            return super()._resolve_qk_norm_config(submodules)
        return {
            "linear_q_proj": submodules.linear_q_proj,
            "linear_q_up_proj": IdentityOp,
            "linear_kv_up_proj": submodules.linear_kv_up_proj,
            "q_layernorm": IdentityOp,
            "kv_layernorm": submodules.kv_layernorm,
        }
