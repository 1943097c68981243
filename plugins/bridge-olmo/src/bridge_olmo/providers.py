"""Providers whose layer spec is OLMo's (``modeling_olmo.specs``), whatever ``transformer_layer_spec`` says.

A ``ModuleSpec`` or callable set as ``transformer_layer_spec`` still wins (as for every provider);
``"auto"`` and ``"local"`` give OLMo's local-module spec, since the stock ones would be wrong; ``"te"``
is refused (Transformer Engine's fused norm-linear modules have no slot for OLMo's norms).
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge_core.errors import ConfigError
from bridge_core.model.provider import GPTModelProvider


def own_spec(provider: GPTModelProvider) -> bool:
    """Whether the provider builds OLMo's spec (``"auto"``/``"local"``); an error for ``"te"``."""
    spec = provider.transformer_layer_spec
    if spec == "te":
        raise ConfigError(
            "transformer_layer_spec='te' is not supported by bridge-olmo (OLMo's post-norms and full-width "
            "QK-norm are local modules); use 'auto' or 'local'"
        )
    return isinstance(spec, str)


@dataclass
class OlmoSpecProvider(GPTModelProvider):
    """Base of OLMo's providers: their spec is built of local modules, even where Transformer Engine is
    installed (``uses_transformer_engine`` is what a Megatron checkpoint records as ``transformer_impl``)."""

    def uses_transformer_engine(self) -> bool:
        return False if own_spec(self) else super().uses_transformer_engine()


@dataclass
class Olmo2Provider(OlmoSpecProvider):
    """OLMo-2: post-norm layers with full-width QK-norm."""

    def layer_spec(self, vp_stage: int | None = None):
        if not own_spec(self):
            return super().layer_spec(vp_stage)
        from bridge_olmo.modeling_olmo.specs import olmo2_layer_spec

        return olmo2_layer_spec(self)


@dataclass
class OlmoeProvider(OlmoSpecProvider):
    """OLMoE: pre-norm MoE layers with full-width QK-norm, plus the HF expert layout of the source
    (``"per_expert"`` or ``"fused"``, saved with a Megatron checkpoint so that an export writes it back)."""

    hf_expert_layout: str = "per_expert"

    def layer_spec(self, vp_stage: int | None = None):
        if not own_spec(self):
            return super().layer_spec(vp_stage)
        from bridge_olmo.modeling_olmo.specs import olmoe_block_spec

        return olmoe_block_spec(self, vp_stage)
