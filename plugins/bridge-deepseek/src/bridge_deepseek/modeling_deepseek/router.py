"""``ExpertBiasRouter``: megatron-core's ``TopKRouter`` with an fp32 weight and ``expert_bias`` held as a
frozen parameter.

DeepSeek-V3's ``e_score_correction_bias`` becomes megatron-core's ``expert_bias``, a buffer the
conversion engine (which converts parameters) would not see. Here it is a ``Parameter`` with
``requires_grad=False``: same name and values in the state dict, no gradient, and megatron-core's
load-balancing update (``_update_router_expert_bias``, an in-place copy) works on it unchanged.
The weight is fp32 whatever the model's dtype, as transformers keeps ``gate.weight`` (and as the router
computes, ``moe_router_dtype="fp32"``), so that an fp32 router of a bf16 checkpoint converts exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.transformer.moe.router import TopKRouter


class ExpertBiasRouter(TopKRouter):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.weight.data = self.weight.data.to(torch.float32)
        bias = self._buffers.pop("expert_bias", None)
        if bias is not None:
            self.expert_bias = torch.nn.Parameter(bias.to(torch.float32), requires_grad=False)
