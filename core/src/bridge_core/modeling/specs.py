"""Installing a core attention into layer specs, and a provider that uses ``SDPACoreAttention``.

``install_core_attention(spec)`` returns a copy of a layer spec (``ModuleSpec``) or decoder block spec
(``layer_specs``) whose ``self_attention.submodules.core_attention`` is ``SDPACoreAttention`` (or
another module), with options bound (``logit_softcap=...``). A bridge uses it through the provider:
``PROVIDER_CLASS = SDPAAttentionProvider`` (below), or ``transformer_layer_spec`` set to a callable
``provider -> spec`` such as ``sdpa_layer_spec``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from megatron.core.transformer.dot_product_attention import DotProductAttention

from bridge_core.errors import ConfigError
from bridge_core.modeling.attention import SDPACoreAttention
from bridge_core.provider import GPTModelProvider

CORE_ATTENTION_CHOICES = ("auto", "sdpa", "local")


def _layers(spec: Any) -> list:
    return list(spec.layer_specs) if hasattr(spec, "layer_specs") else [spec]


def install_core_attention(spec: Any, module: type = SDPACoreAttention, only_replace: Any = None, **options: Any):
    """A copy of ``spec`` whose self-attention uses ``module`` (``options`` bound to its constructor).

    ``only_replace``: replace only a core attention of this class (e.g. the local
    ``DotProductAttention``, leaving Transformer Engine's alone); None replaces any.
    """
    spec = copy.deepcopy(spec)
    builder = functools.partial(module, **options) if options else module
    for layer in _layers(spec):
        attention = getattr(getattr(layer, "submodules", None), "self_attention", None)
        subs = getattr(attention, "submodules", None)
        if subs is None or not hasattr(subs, "core_attention"):
            raise ConfigError(f"install_core_attention: {type(layer).__name__} has no self_attention.core_attention")
        if only_replace is None or subs.core_attention is only_replace:
            subs.core_attention = builder
    return spec


def sdpa_layer_spec(provider: GPTModelProvider, vp_stage: int | None = None):
    """The provider's stock local layer spec with ``SDPACoreAttention`` (for ``transformer_layer_spec``)."""
    local = copy.copy(provider)
    local.transformer_layer_spec = "local"
    return install_core_attention(GPTModelProvider.layer_spec(local, vp_stage))


@dataclass
class SDPAAttentionProvider(GPTModelProvider):
    """A ``GPTModelProvider`` whose local layer spec uses ``SDPACoreAttention`` where needed.

    ``core_attention``: ``"auto"`` (the default) replaces the local ``DotProductAttention`` only when a
    sliding window is set (``window_size``), which the local module cannot apply exactly;
    ``"sdpa"`` always replaces it (faster, less memory: the training default); ``"local"`` never.
    Transformer Engine's attention, which applies windows itself, is kept. The setting is a plain
    string, so it travels with a Megatron checkpoint's run config.
    """

    core_attention: str = "auto"

    def layer_spec(self, vp_stage: int | None = None):
        spec = super().layer_spec(vp_stage)
        if self.core_attention not in CORE_ATTENTION_CHOICES:
            raise ConfigError(
                f"core_attention must be one of {', '.join(CORE_ATTENTION_CHOICES)}, got {self.core_attention!r}"
            )
        wanted = self.core_attention == "sdpa" or (self.core_attention == "auto" and self.window_size is not None)
        if not wanted:
            return spec
        return install_core_attention(spec, only_replace=DotProductAttention)
