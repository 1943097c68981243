"""FLOPs contributions of bridge-phi's blocks (registered in ``plugin.py``).

A FLOPs function takes the provider (a megatron-core ``TransformerConfig``) and returns the forward
FLOPs per token of one block. Throughput tools sum them over the model's blocks; a block of new
modeling code needs its own function here.
"""

from __future__ import annotations

from typing import Any


def decoder_layer_flops(provider: Any) -> float:
    """One decoder layer's matrix multiplications per token: QKV and output projections, gated MLP.

    The attention-score term (``4 * seq * heads * head_dim``), which grows with the sequence length,
    is not included.
    """
    hidden = provider.hidden_size
    heads = provider.num_attention_heads
    groups = provider.num_query_groups or heads
    head_dim = provider.kv_channels or hidden // heads
    qkv = hidden * (heads + 2 * groups) * head_dim
    out = heads * head_dim * hidden
    mlp = hidden * provider.ffn_hidden_size * (3 if provider.gated_linear_unit else 2)
    return 2.0 * (qkv + out + mlp)
