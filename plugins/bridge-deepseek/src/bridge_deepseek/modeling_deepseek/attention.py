"""``MLADotProductAttention``: megatron-core's local ``DotProductAttention`` for multi-latent attention.

MLA builds its core attention with ``k_channels`` (nope + rope head size) and ``v_channels`` (the value
head size), which the local module (megatron-core 0.16-0.19) does not accept; its output is sized by
``kv_channels``. This one takes both and sizes its output by ``v_channels`` per head.
"""

from __future__ import annotations

from typing import Any

from megatron.core.transformer.dot_product_attention import DotProductAttention


class MLADotProductAttention(DotProductAttention):
    """``DotProductAttention`` whose output is ``v_channels`` per head (MLA's value head size)."""

    def __init__(self, *args: Any, k_channels: int | None = None, v_channels: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if v_channels is not None:
            self.hidden_size_per_partition = v_channels * self.num_attention_heads_per_partition
