"""``DualRopeSelfAttention``: Gemma 3's two RoPE bases in one model.

megatron-core's ``GPTModel`` computes one rotary table (``rotary_base``, with the global layers'
linear scaling) and hands it to every layer. On the layers with a sliding window this attention
replaces it by its own table of the same length from ``config.local_rotary_base`` (no scaling), so
KV-cache offsets and everything downstream stay megatron-core's.
"""

from __future__ import annotations

from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.utils import is_layer_window_attention


class DualRopeSelfAttention(SelfAttention):
    """``SelfAttention`` whose windowed layers rotate with ``config.local_rotary_base``."""

    def __init__(self, config, submodules, layer_number: int, *args, **kwargs):
        super().__init__(config, submodules, layer_number, *args, **kwargs)
        self.local_rotary = None
        local = getattr(config, "local_rotary_base", None)
        if local is not None and is_layer_window_attention(
            config.window_size, config.window_attn_skip_freq, self.layer_number
        ):
            self.local_rotary = RotaryEmbedding(
                kv_channels=config.kv_channels,
                rotary_percent=config.rotary_percent,
                rotary_base=local,
                use_cpu_initialization=config.use_cpu_initialization,
            )

    def forward(self, hidden_states, *args, rotary_pos_emb=None, **kwargs):
        if self.local_rotary is not None and rotary_pos_emb is not None:
            table = self.local_rotary(rotary_pos_emb.size(0))
            rotary_pos_emb = table.to(rotary_pos_emb.device)
        return super().forward(hidden_states, *args, rotary_pos_emb=rotary_pos_emb, **kwargs)
