"""FLOPs contributions of bridge-deepseek's blocks (registered in ``plugin.py``).

A FLOPs function takes the provider (a megatron-core ``MLATransformerConfig``) and the 1-indexed layer
number and returns the forward FLOPs per token of that layer's sequence-independent matrix
multiplications; the core adds the attention-score term (multi-latent: ``qk_head_dim +
qk_pos_emb_head_dim`` per query/key head, ``v_head_dim`` per value head), the logits, and for each MTP
layer (numbered after the decoder's) its ``eh_proj`` and logits.
"""

from __future__ import annotations

from typing import Any

from bridge_core.training.flops import is_moe_layer, mlp_flops, moe_flops


def mla_projection_flops(c: Any) -> float:
    """Multi-latent attention's projections: q (low-rank down and up, or one projection), the kv
    down-projection with the shared rope key, the kv up-projection to every head's key and value, output."""
    h, heads = c.hidden_size, c.num_attention_heads
    q_head = c.qk_head_dim + c.qk_pos_emb_head_dim
    rank = c.q_lora_rank
    q = h * heads * q_head if rank is None else h * rank + rank * heads * q_head
    kv = h * (c.kv_lora_rank + c.qk_pos_emb_head_dim) + c.kv_lora_rank * heads * (c.qk_head_dim + c.v_head_dim)
    return 2.0 * (q + kv + heads * c.v_head_dim * h)


def decoder_layer_flops(c: Any, layer_number: int = 1) -> float:
    """One DeepSeek layer: MLA projections and the dense MLP (the first ``first_k_dense_replace`` layers)
    or the router, top-k routed experts and shared experts. MTP layers (past ``num_layers``) are MoE layers."""
    moe = layer_number > c.num_layers or is_moe_layer(c, layer_number)
    return mla_projection_flops(c) + (moe_flops(c) if moe else mlp_flops(c, c.ffn_hidden_size))
