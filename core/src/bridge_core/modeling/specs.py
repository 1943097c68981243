"""Installing a core attention into layer specs, and a provider that uses ``SDPACoreAttention``.

``install_core_attention(spec)`` returns a copy of a layer spec (``ModuleSpec``) or decoder block spec
(``layer_specs``) whose ``self_attention.submodules.core_attention`` is ``SDPACoreAttention`` (or
another module), with options bound (``logit_softcap=...``). A bridge uses it through the provider:
``PROVIDER_CLASS = SDPAAttentionProvider`` (below), or ``transformer_layer_spec`` set to a callable
``provider -> spec`` such as ``sdpa_layer_spec``. ``use_core_attention(provider, choice)`` applies a
training run's ``attention.core_attention`` to any provider, whatever its own layer spec.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

from megatron.core.transformer.dot_product_attention import DotProductAttention

from bridge_core.errors import ConfigError
from bridge_core.model.provider import GPTModelProvider
from bridge_core.modeling.attention import SDPACoreAttention

CORE_ATTENTION_CHOICES = ("auto", "sdpa", "local")


def _layers(spec: Any) -> list[Any]:
    return list(spec.layer_specs) if hasattr(spec, "layer_specs") else [spec]


def install_core_attention(
    spec: Any, module: type = SDPACoreAttention, only_replace: Any = None, skip_missing: bool = False, **options: Any
) -> Any:
    """A copy of ``spec`` whose self-attention uses ``module`` (``options`` bound to its constructor).

    ``only_replace``: replace only a core attention of this class (e.g. the local
    ``DotProductAttention``, leaving Transformer Engine's alone); None replaces any.
    ``skip_missing``: leave layers without ``self_attention.core_attention`` alone (else an error).
    """
    spec = copy.deepcopy(spec)
    builder = functools.partial(module, **options) if options else module
    for layer in _layers(spec):
        attention = getattr(getattr(layer, "submodules", None), "self_attention", None)
        subs = getattr(attention, "submodules", None)
        if subs is None or not hasattr(subs, "core_attention"):
            if skip_missing:
                continue
            raise ConfigError(f"install_core_attention: {type(layer).__name__} has no self_attention.core_attention")
        if only_replace is None or subs.core_attention is only_replace:
            subs.core_attention = builder
    return spec


def sdpa_layer_spec(provider: GPTModelProvider, vp_stage: int | None = None) -> Any:
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

    def layer_spec(self, vp_stage: int | None = None) -> Any:
        spec = super().layer_spec(vp_stage)
        if self.core_attention not in CORE_ATTENTION_CHOICES:
            raise ConfigError(
                f"core_attention must be one of {', '.join(CORE_ATTENTION_CHOICES)}, got {self.core_attention!r}"
            )
        wanted = self.core_attention == "sdpa" or (self.core_attention == "auto" and self.window_size is not None)
        if not wanted:
            return spec
        return install_core_attention(spec, only_replace=DotProductAttention)


def _core_attention_class(builder: Any) -> Any:
    return builder.func if isinstance(builder, functools.partial) else builder


def _check_sdpa_serves(provider: GPTModelProvider) -> None:
    """One-line errors for what ``SDPACoreAttention`` refuses, before any model is built."""
    if provider.context_parallel_size != 1:
        raise ConfigError(
            f"attention.core_attention=sdpa: context parallelism (parallel.cp={provider.context_parallel_size}) "
            "is not supported by SDPA"
        )
    softmax = getattr(provider, "softmax_type", "vanilla")
    if softmax != "vanilla":
        raise ConfigError(
            f"attention.core_attention=sdpa: softmax_type={softmax!r} is not supported by SDPA; "
            "use attention.core_attention=local"
        )


def _sdpa_spec(spec: Any, strict: bool) -> Any:
    """``spec`` with the local ``DotProductAttention`` replaced by ``SDPACoreAttention``.

    ``strict``: any other core attention (Transformer Engine's, a bridge's own) is an error naming it.
    """
    spec = install_core_attention(spec, only_replace=DotProductAttention, skip_missing=not strict)
    if strict:
        for layer in _layers(spec):
            found = _core_attention_class(layer.submodules.self_attention.submodules.core_attention)
            if not (isinstance(found, type) and issubclass(found, SDPACoreAttention)):
                name = getattr(found, "__name__", found)
                raise ConfigError(
                    f"attention.core_attention=sdpa: the layer spec's core attention is {name}, "
                    "not megatron-core's local DotProductAttention; use attention.core_attention=auto or local "
                    "(or model.transformer_layer_spec=local instead of Transformer Engine's)"
                )
    return spec


def use_core_attention(provider: GPTModelProvider, choice: str) -> str:
    """Make ``provider`` build its layers with the core attention ``choice``; returns what it resolved to.

    ``local``: the provider's own spec, untouched (``"local"``). ``sdpa``: every core attention is
    ``SDPACoreAttention`` (the local one replaced; anything else is an error). ``auto``: ``"te"`` when the
    provider uses Transformer Engine, else ``sdpa`` wherever the spec has the local ``DotProductAttention``.
    """
    if choice not in CORE_ATTENTION_CHOICES:
        raise ConfigError(
            f"attention.core_attention must be one of {', '.join(CORE_ATTENTION_CHOICES)}, got {choice!r}"
        )
    if choice == "local":
        return "local"
    if choice == "auto" and provider.uses_transformer_engine():
        return "te"
    _check_sdpa_serves(provider)
    own = provider.layer_spec  # the bound method: whatever the provider's class builds
    strict = choice == "sdpa"

    def layer_spec(vp_stage: int | None = None) -> Any:
        return _sdpa_spec(own(vp_stage), strict)

    provider.layer_spec = layer_spec  # type: ignore[method-assign]  # per instance: not a dataclass field, never saved
    return "sdpa"
