"""RMSNorms as OLMo computes them, and the full-width QK-norm that spans every attention head.

HF's ``Olmo2RMSNorm`` multiplies the weight into the fp32 normalised input and then casts
(``weight_first=True``); ``OlmoeRMSNorm`` casts first, as Llama (``weight_first=False``). Equal in fp32,
one rounding apart in bf16.

OLMo's ``q_norm`` (``[heads * head_dim]``) and ``k_norm`` (``[groups * head_dim]``) normalise the whole
projection of a token, across all heads, where megatron-core's ``qk_layernorm`` normalises each head.
Under tensor parallelism a rank holds only its heads: the sum of squares is all-reduced over the
tensor-parallel group (a norm over the local shard alone is silently wrong), and the weight is split
across ranks like the heads.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from torch import Tensor, nn


def rms_normalise(x: Tensor, weight: Tensor, sum_sq: Tensor, count: int, eps: float, weight_first: bool) -> Tensor:
    """``x * rsqrt(sum_sq / count + eps) * weight`` in fp32, cast back to ``x``'s dtype as HF does."""
    dtype = x.dtype
    normed = x.float() * torch.rsqrt(sum_sq / count + eps)
    return (weight * normed).to(dtype) if weight_first else weight * normed.to(dtype)


def tp_sum(value: Tensor, group: dist.ProcessGroup | None) -> Tensor:
    """``value`` summed over the tensor-parallel ``group`` (autograd: the gradient is summed too)."""
    if group is None or dist.get_world_size(group) == 1:
        return value
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(value, group=group)


class OlmoRMSNorm(nn.Module):
    """RMSNorm over the last dimension with HF OLMo's rounding (see the module docstring)."""

    def __init__(self, hidden_size: int, eps: float, weight_first: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.weight_first = weight_first

    def forward(self, x: Tensor) -> Tensor:
        sum_sq = x.float().pow(2).sum(-1, keepdim=True)
        return rms_normalise(x, self.weight, sum_sq, x.size(-1), self.eps, self.weight_first)


class FullWidthQKNorm(nn.Module):
    """RMSNorm over all heads of a token's query (or key): ``[s, b, heads_local, d]`` in and out.

    ``heads``: the model's total (query heads or KV groups); ``heads_local`` of them live on this rank,
    whose weight slice is ``[heads_local * d]`` (rows ``rank * heads_local * d`` on, of HF's vector).
    """

    def __init__(self, heads: int, heads_local: int, head_dim: int, eps: float, tp_group, weight_first: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(heads_local * head_dim))
        set_tensor_model_parallel_attributes(self.weight, is_parallel=True, dim=0, stride=1)
        self.count, self.eps, self.tp_group, self.weight_first = heads * head_dim, eps, tp_group, weight_first

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[:-2], -1)
        sum_sq = tp_sum(flat.float().pow(2).sum(-1, keepdim=True), self.tp_group)
        return rms_normalise(flat, self.weight, sum_sq, self.count, self.eps, self.weight_first).view_as(x)
