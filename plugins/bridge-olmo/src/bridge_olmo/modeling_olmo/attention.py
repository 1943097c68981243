"""``FullWidthQKSelfAttention``: megatron-core's ``SelfAttention`` with OLMo's full-width q/k norms.

The stock module builds ``q_layernorm``/``k_layernorm`` per head (``[head_dim]``); this one builds
``FullWidthQKNorm`` over all of a rank's heads, summing squares across the tensor-parallel group, and
applies them where the stock one does (after the QKV projection, before RoPE). The spec's
``q_layernorm``/``k_layernorm`` are placeholders (``IdentityOp``), replaced here.
"""

from __future__ import annotations

from bridge_core.errors import ConfigError
from megatron.core.transformer.attention import SelfAttention

from bridge_olmo.modeling_olmo.norms import FullWidthQKNorm


class FullWidthQKSelfAttention(SelfAttention):
    """Self-attention whose q/k norms span the whole projection (OLMo-2, OLMoE); see the module docstring.

    ``weight_first``: the norms' rounding (``OlmoRMSNorm``): True for OLMo-2, False for OLMoE.
    """

    def __init__(self, config, submodules, layer_number, attn_mask_type, weight_first: bool = True, **kwargs):
        super().__init__(config, submodules, layer_number, attn_mask_type, **kwargs)
        tp = self.world_size
        groups = config.num_query_groups
        if groups % tp:
            raise ConfigError(
                f"num_key_value_heads={groups} is not a multiple of the tensor-parallel size {tp} "
                "(full-width QK-norm needs every key head on exactly one rank)"
            )
        d, eps, group = self.hidden_size_per_attention_head, config.layernorm_epsilon, self.pg_collection.tp
        self.q_layernorm = FullWidthQKNorm(
            config.num_attention_heads, self.num_attention_heads_per_partition, d, eps, group, weight_first
        )
        self.k_layernorm = FullWidthQKNorm(groups, self.num_query_groups_per_partition, d, eps, group, weight_first)
