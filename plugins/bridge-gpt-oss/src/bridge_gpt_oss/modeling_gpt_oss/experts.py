"""``ExpertRowParallelLinear``: the experts' ``linear_fc2`` that lets megatron-core add their biases in training.

megatron-core 0.16's expert MLP adds the bias scaled by the routing probabilities in place
(``output += bias * probs``, ``transformer/mlp.py``). At expert tensor parallel size 1 (GPT-OSS's only
size) the reduction returns its input as-is, a view autograd forbids modifying in place: every
training step raises. This module returns a fresh tensor while gradients are recorded (inference,
where nothing is recorded, keeps the view).
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import RowParallelLinear


class ExpertRowParallelLinear(RowParallelLinear):
    """``RowParallelLinear`` whose output may be modified in place under autograd."""

    def forward(self, *args, **kwargs):
        output, bias = super().forward(*args, **kwargs)
        return (output.clone() if torch.is_grad_enabled() else output), bias
