"""``PostNormRowParallelLinear``: a row-parallel linear whose (all-reduced) output is RMS-normalised.

OLMo-2 normalises the output of attention and of the MLP before the residual add
(``x + norm(attn(x))``), with no norm before either. megatron-core's layer has no slot after a
sublayer; a post-norm inside the last linear of each (``linear_proj``, ``linear_fc2``; parameter
``...linear_proj.post_layernorm.weight``) is that slot. The full output (TP-reduced; with sequence
parallelism, whole tokens) is normalised over the hidden dimension, so it is exact at any TP.
"""

from __future__ import annotations

from bridge_core.errors import ConfigError
from megatron.core.tensor_parallel.layers import RowParallelLinear

from bridge_olmo.modeling_olmo.norms import OlmoRMSNorm


class PostNormRowParallelLinear(RowParallelLinear):
    """``RowParallelLinear`` then ``OlmoRMSNorm`` over ``output_size`` (see the module docstring)."""

    def __init__(self, input_size: int, output_size: int, *, config, bias: bool, **kwargs):
        if bias:
            raise ConfigError("PostNormRowParallelLinear: a bias (add_bias_linear) would be added after the norm")
        super().__init__(input_size, output_size, config=config, bias=bias, **kwargs)
        self.post_layernorm = OlmoRMSNorm(output_size, config.layernorm_epsilon, weight_first=True)

    def forward(self, input_, *args, **kwargs):
        output, bias = super().forward(input_, *args, **kwargs)
        return self.post_layernorm(output), bias
