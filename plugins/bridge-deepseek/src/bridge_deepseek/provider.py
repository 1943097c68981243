"""``DeepseekProvider``: a ``GPTModelProvider`` that is also megatron-core's ``MLATransformerConfig``.

Its layer spec is this plugin's (``modeling_deepseek.specs``: local modules, MLA, first-k dense
layers, shared experts, the expert-bias router), and it builds the MTP block when
``mtp_num_layers`` is set. It records the HF expert layout of the source (``hf_expert_layout``,
saved with a Megatron checkpoint) so that an export writes what the source had.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge_core.errors import ConfigError
from bridge_core.model.provider import GPTModelProvider
from bridge_core.runtime.cpu_support import tensor_cuda_is_identity
from megatron.core.transformer.transformer_config import MLATransformerConfig


def own_spec(provider: GPTModelProvider) -> bool:
    """Whether the provider builds this plugin's spec (``"auto"``/``"local"``); an error for ``"te"``."""
    spec = provider.transformer_layer_spec
    if spec == "te":
        raise ConfigError(
            "transformer_layer_spec='te' is not supported by bridge-deepseek (its MLA core attention and "
            "expert-bias router are local modules); use 'auto' or 'local'"
        )
    return isinstance(spec, str)


@dataclass
class DeepseekProvider(GPTModelProvider, MLATransformerConfig):
    """DeepSeek-V2/V3: multi-latent attention, MoE with shared experts, optional MTP layers."""

    hf_expert_layout: str = "per_expert"
    # HF values with no megatron-core counterpart, kept so that an export writes what the source had
    hf_n_group: int | None = None
    hf_topk_group: int | None = None
    hf_topk_method: str | None = None
    hf_num_nextn_predict_layers: int = 0
    # whether the source's MTP layers hold copies of embed_tokens / lm_head (the released V3 does)
    hf_mtp_head_copies: bool = False
    # the source's dtypes of gate.weight / e_score_correction_bias (transformers keeps both in fp32)
    hf_router_dtype: str = "float32"
    hf_expert_bias_dtype: str = "float32"

    def uses_transformer_engine(self) -> bool:
        return False if own_spec(self) else super().uses_transformer_engine()

    def layer_spec(self, vp_stage: int | None = None):
        if not own_spec(self):
            return super().layer_spec(vp_stage)
        from bridge_deepseek.modeling_deepseek.specs import decoder_block_spec

        return decoder_block_spec(self, vp_stage)

    def mtp_spec(self, vp_stage: int | None = None):
        from bridge_deepseek.modeling_deepseek.specs import mtp_block_spec

        return mtp_block_spec(self, vp_stage) if self.mtp_num_layers else None

    def provide(self, pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None):
        """One ``GPTModel`` chunk, with the MTP block on the stage that holds it."""
        from megatron.core import parallel_state as ps
        from megatron.core.models.gpt import GPTModel

        if not self._finalized:
            self.finalize()
        if pre_process is None:
            pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        if post_process is None:
            post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        with tensor_cuda_is_identity():
            return GPTModel(
                config=self,
                transformer_layer_spec=self.layer_spec(vp_stage),
                vocab_size=self.vocab_size_with_padding,
                max_sequence_length=self.seq_length,
                pre_process=pre_process,
                post_process=post_process,
                fp16_lm_cross_entropy=self.fp16_lm_cross_entropy,
                parallel_output=self.parallel_output,
                share_embeddings_and_output_weights=self.share_embeddings_and_output_weights,
                position_embedding_type=self.position_embedding_type,
                rotary_percent=self.rotary_percent,
                rotary_base=self.rotary_base,
                vp_stage=vp_stage,
                mtp_block_spec=self.mtp_spec(vp_stage) if post_process else None,
            )
