"""``ExpertBiasRouter``: megatron-core's ``TopKRouter`` with ``expert_bias`` held as a frozen parameter.

DeepSeek-V3's ``e_score_correction_bias`` becomes megatron-core's ``expert_bias``, a buffer the
conversion engine (which converts parameters) would not see. Here it is a ``Parameter`` with
``requires_grad=False``: same name and values in the state dict, no gradient, and megatron-core's
load-balancing update (``_update_router_expert_bias``, an in-place copy) works on it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core.transformer.moe.router import TopKRouter


class ExpertBiasRouter(TopKRouter):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        bias = self._buffers.pop("expert_bias", None)
        if bias is not None:
            self.expert_bias = torch.nn.Parameter(bias.to(torch.float32), requires_grad=False)
