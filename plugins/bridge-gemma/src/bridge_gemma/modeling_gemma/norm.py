"""Gemma's norms: ``GemmaRMSNorm`` (zero-centred weight) and ``PostNormRowParallelLinear``.

megatron-core's zero-centred gamma (``layernorm_zero_centered_gamma``) exists only in Transformer
Engine's norms; the local spec's ``WrappedTorchNorm`` refuses it. These modules are the local,
CPU-capable equivalent, computed exactly as transformers' ``GemmaRMSNorm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import RowParallelLinear
from torch import Tensor


def gelu_tanh(x: Tensor) -> Tensor:
    """GeGLU's activation: ``gelu(approximate="tanh")`` (HF ``gelu_pytorch_tanh``)."""
    return F.gelu(x, approximate="tanh")


class GemmaRMSNorm(torch.nn.Module):
    """RMSNorm in fp32, times ``1 + weight`` (``config.layernorm_zero_centered_gamma``) or ``weight``, cast back.

    The weight is stored as HF stores it (zero-centred): folding the +1 into it is lossy in bf16.
    Built like megatron-core's norms: ``(config, hidden_size, eps)``.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, **unused):
        super().__init__()
        self.eps = eps
        self.zero_centered = bool(config.layernorm_zero_centered_gamma)
        init = torch.zeros if self.zero_centered else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        return (h * (1.0 + w if self.zero_centered else w)).type_as(x)


class PostNormRowParallelLinear(RowParallelLinear):
    """A ``RowParallelLinear`` whose (all-reduced) output goes through a ``GemmaRMSNorm`` (``post_layernorm``).

    Gemma 2's sandwich norms: as ``linear_proj`` the post-attention norm, as ``linear_fc2`` the
    post-feedforward norm, both applied before the residual add (parameter ``….post_layernorm.weight``).
    """

    def __init__(self, input_size: int, output_size: int, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.post_layernorm = GemmaRMSNorm(config, output_size, eps=config.layernorm_epsilon)

    def forward(self, input_: Tensor, *args, **kwargs):
        output, bias = super().forward(input_, *args, **kwargs)
        return self.post_layernorm(output), bias
