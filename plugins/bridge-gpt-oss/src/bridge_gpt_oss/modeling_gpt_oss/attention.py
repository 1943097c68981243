"""``SinkCoreAttention``: the core's SDPA attention with GPT-OSS's learned attention sinks.

Each head has one learned logit (HF ``self_attn.sinks [heads]``) that joins every query's softmax as
an extra key with no value: ``softmax([scores, sink])`` without the last column. The parameter is
megatron-core's ``core_attention.softmax_offset`` (``softmax_type="learnable"``), split over heads
across tensor-parallel ranks. Windows (GPT-OSS's alternating sliding layers) are applied exactly by
the base class on any device, where the local ``DotProductAttention`` builds its window mask on
"cuda" and leaves ``softmax_offset`` unmarked for tensor parallelism.
"""

from __future__ import annotations

import torch
from bridge_core.modeling.attention import SDPACoreAttention
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from torch import Tensor


class SinkCoreAttention(SDPACoreAttention):
    """``SDPACoreAttention`` plus a learned per-head sink logit (``softmax_offset``) in the softmax."""

    SOFTMAX_TYPES = ("learnable",)

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        offset = torch.empty(self.num_attention_heads_per_partition, device=device, dtype=config.params_dtype)
        self.softmax_offset = torch.nn.Parameter(offset)
        set_tensor_model_parallel_attributes(self.softmax_offset, is_parallel=True, dim=0, stride=1)
        with torch.no_grad():
            if config.perform_initialization:
                config.init_method(self.softmax_offset)
            else:
                self.softmax_offset.zero_()

    @property
    def eager(self) -> bool:
        return True  # the sinks need the scores

    def softmax(self, scores: Tensor) -> Tensor:
        """Masked fp32 scores ``[b, h, sq, sk]`` -> probabilities, each row's mass shared with its sink."""
        b, h, sq, _ = scores.shape
        sink = self.softmax_offset.float().view(1, h, 1, 1).expand(b, h, sq, 1)
        combined = torch.cat([scores, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return torch.softmax(combined, dim=-1)[..., :-1]

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None):
        """``softmax_offset`` sharded over heads (dim 0), as megatron-core's own attention saves it."""
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(
            state,
            prefix,
            {"softmax_offset": 0},
            sharded_offsets,
            tp_group=self.tp_group,
            dp_cp_group=(metadata or {}).get("dp_cp_group"),
        )
