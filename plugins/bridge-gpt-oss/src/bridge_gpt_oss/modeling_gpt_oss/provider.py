"""``GptOssProvider``: megatron-core's MoE decoder with YaRN settings and the sink attention.

megatron-core 0.16 reads the YaRN settings with ``getattr`` from the config object but does not
declare them as ``TransformerConfig`` fields: they are fields here, so they are set on every
provider and travel with a Megatron checkpoint's run config. On the local layer spec the core
attention is ``SinkCoreAttention`` and the experts' ``linear_fc2`` is ``ExpertRowParallelLinear``
(training steps); Transformer Engine's attention computes the sinks itself (``softmax_type="learnable"``,
TE >= 2.8).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge_core.errors import ConfigError
from bridge_core.model.mcore_versions import mlp_submodules
from bridge_core.model.provider import GPTModelProvider
from bridge_core.modeling.specs import install_core_attention
from megatron.core.transformer.dot_product_attention import DotProductAttention

from bridge_gpt_oss.modeling_gpt_oss.attention import SinkCoreAttention
from bridge_gpt_oss.modeling_gpt_oss.experts import ExpertRowParallelLinear


@dataclass
class GptOssProvider(GPTModelProvider):
    """``GPTModelProvider`` plus the YaRN fields megatron-core reads and the HF source's expert format."""

    yarn_rotary_scaling_factor: float | None = None
    yarn_original_max_position_embeddings: int | None = None
    yarn_beta_fast: float | None = None
    yarn_beta_slow: float | None = None
    yarn_mscale: float | None = None
    yarn_mscale_all_dim: float | None = None
    yarn_correction_range_round_to_int: bool = True

    def finalize(self) -> GptOssProvider:
        # megatron-core asserts that MoE with biases runs at expert tensor parallel size 1.
        if self.expert_tensor_parallel_size is None:
            self.expert_tensor_parallel_size = 1
        if self.expert_tensor_parallel_size != 1:
            raise ConfigError(
                f"expert_tensor_parallel_size={self.expert_tensor_parallel_size}: GPT-OSS experts have biases, "
                "which megatron-core supports at expert tensor parallel size 1 only (use --etp 1 or leave it unset)"
            )
        super().finalize()
        return self

    def layer_spec(self, vp_stage: int | None = None):
        spec = super().layer_spec(vp_stage)
        if self.uses_transformer_engine() or not isinstance(self.transformer_layer_spec, str):
            return spec
        spec = install_core_attention(spec, module=SinkCoreAttention, only_replace=DotProductAttention)
        for layer in spec.layer_specs:
            experts = mlp_submodules(
                layer.submodules.mlp
            ).experts  # MoESubmodules (0.16: a ModuleSpec; 0.19: a partial)
            mlp_submodules(experts).linear_fc2 = ExpertRowParallelLinear
        return spec
