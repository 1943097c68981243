"""FLOPs contributions of bridge-mixtral's blocks (registered in ``plugin.py``).

A FLOPs function takes the provider (a megatron-core ``TransformerConfig``) and returns the forward
FLOPs per token of one block. Throughput tools sum them over the model's blocks.
"""

from __future__ import annotations

from typing import Any


def decoder_layer_flops(provider: Any) -> float:
    """One sparse decoder layer's matrix multiplications per token: QKV and output projections, the
    router, and the ``moe_router_topk`` gated experts each token is sent to.

    The attention-score term (``4 * seq * heads * head_dim``), which grows with the sequence length,
    is not included.
    """
    hidden = provider.hidden_size
    heads = provider.num_attention_heads
    groups = provider.num_query_groups or heads
    head_dim = provider.kv_channels or hidden // heads
    qkv = hidden * (heads + 2 * groups) * head_dim
    out = heads * head_dim * hidden
    router = hidden * provider.num_moe_experts
    experts = provider.moe_router_topk * 3 * hidden * (provider.moe_ffn_hidden_size or provider.ffn_hidden_size)
    return 2.0 * (qkv + out + router + experts)
