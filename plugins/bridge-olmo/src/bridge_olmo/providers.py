"""Providers whose layer spec is OLMo's (``modeling_olmo.specs``), whatever ``transformer_layer_spec`` says.

A ``ModuleSpec`` or callable set as ``transformer_layer_spec`` still wins (as for every provider);
``"auto"``/``"local"``/``"te"`` give OLMo's local-module spec, since the stock ones would be wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge_core.provider import GPTModelProvider


@dataclass
class Olmo2Provider(GPTModelProvider):
    """OLMo-2: post-norm layers with full-width QK-norm."""

    def layer_spec(self, vp_stage: int | None = None):
        if not isinstance(self.transformer_layer_spec, str):
            return super().layer_spec(vp_stage)
        from bridge_olmo.modeling_olmo.specs import olmo2_layer_spec

        return olmo2_layer_spec(self)


@dataclass
class OlmoeProvider(GPTModelProvider):
    """OLMoE: pre-norm MoE layers with full-width QK-norm, plus the HF expert layout of the source
    (``"per_expert"`` or ``"fused"``, saved with a Megatron checkpoint so that an export writes it back)."""

    hf_expert_layout: str = "per_expert"

    def layer_spec(self, vp_stage: int | None = None):
        if not isinstance(self.transformer_layer_spec, str):
            return super().layer_spec(vp_stage)
        from bridge_olmo.modeling_olmo.specs import olmoe_block_spec

        return olmoe_block_spec(self, vp_stage)
