"""``MegatronModelBridge``: the contract a model family implements (contract 1.x).

A bridge translates one HF architecture: its config to a ``GPTModelProvider`` and back, and its
tensors through a ``MegatronMappingRegistry``. The engine (``bridge_core.conversion``) does the I/O,
planning, coverage checks and communication; a bridge only describes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, ClassVar

import torch

from bridge_core.model.config_translation import (
    Check,
    check_hf_config,
    check_model_settings,
    dtype_name,
    hf_dtype,
    hf_to_provider,
    provider_to_hf,
)
from bridge_core.model.mapping_registry import MegatronMappingRegistry
from bridge_core.model.provider import GPTModelProvider


class MegatronModelBridge:
    """Base class of every model bridge. Subclass it in your plugin and register it by string.

    Class attributes a subclass sets:
    - ``CONFIG_MAPPING``: ``(hf_key, provider_attribute)`` pairs, used in both directions.
    - ``PROVIDER_DEFAULTS``: provider settings the architecture implies (normalization, activation...).
    - ``SUPPORTED_HF_CONFIG``: other HF keys the bridge accepts, with the value it supports or a
      predicate ``(value, hf_config) -> bool`` (its docstring names what is supported).
    - ``HANDLED_HF_CONFIG``: HF keys the bridge translates in code (not through ``CONFIG_MAPPING``).
    - ``FLOPS_DECODER_LAYER``: the ``register_flops`` block its decoder layers are (None: the core's
      standard count; see ``bridge_core.training.flops``).
    - ``dequantizes_hf_weights``: True when ``maybe_modify_loaded_hf_weight`` dequantizes FP8/INT
      weights (it then reads the ``*_scale_inv`` companions itself).

    Hooks (the seed's names): ``provider_bridge``, ``hf_config_to_provider_kwargs``,
    ``mapping_registry``, ``megatron_to_hf_config``, ``maybe_modify_loaded_hf_weight``,
    ``maybe_modify_converted_hf_weight``. Inside ``mapping_registry()`` read ``self.hf_config``.
    """

    CONFIG_MAPPING: ClassVar[list[tuple[str, str]]] = []
    PROVIDER_DEFAULTS: ClassVar[dict[str, Any]] = {}
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Check]] = {}
    HANDLED_HF_CONFIG: ClassVar[frozenset[str]] = frozenset()
    PROVIDER_CLASS: ClassVar[type[GPTModelProvider]] = GPTModelProvider
    FLOPS_DECODER_LAYER: ClassVar[str | None] = None
    dequantizes_hf_weights: ClassVar[bool] = False
    # HF keys the user vouches for (``--accept-config`` / ``accept_config=``); set by ``AutoBridge``.
    accepted_hf_config: frozenset[str] = frozenset()

    def __init__(self, hf_config: Any = None):
        self.hf_config = hf_config

    # -- config ---------------------------------------------------------------------------------
    def provider_bridge(self, hf_pretrained: Any) -> GPTModelProvider:
        """Translate ``hf_pretrained.config`` into a provider (after refusing what cannot be translated)."""
        self.hf_config = hf_pretrained.config
        self.check_hf_config(self.hf_config)
        kwargs = self.hf_config_to_provider_kwargs(self.hf_config)
        check_model_settings(kwargs, "config.json", names={attr: key for key, attr in self.CONFIG_MAPPING})
        return self.PROVIDER_CLASS(**kwargs)

    def check_hf_config(self, hf_config: Any) -> None:
        """Raise ``ConfigError`` for config keys that would change the math but are not translated."""
        handled = {k for k, _ in self.CONFIG_MAPPING} | set(self.HANDLED_HF_CONFIG)
        check_hf_config(
            hf_config,
            handled=handled,
            supported=self.SUPPORTED_HF_CONFIG,
            where=type(self).__name__,
            accepted=self.accepted_hf_config,
        )

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        """Provider keyword arguments: ``PROVIDER_DEFAULTS``, then ``CONFIG_MAPPING``, then the dtype."""
        kwargs = dict(self.PROVIDER_DEFAULTS)
        kwargs.update(hf_to_provider(hf_config, self.CONFIG_MAPPING))
        kwargs["params_dtype"] = hf_dtype(hf_config) or torch.float32
        return kwargs

    def megatron_to_hf_config(self, provider: GPTModelProvider) -> dict[str, Any]:
        """HF config entries regenerated from the provider (the inverse of the above)."""
        out = provider_to_hf(provider, self.CONFIG_MAPPING)
        out["dtype"] = dtype_name(provider.params_dtype)
        return out

    # -- weights --------------------------------------------------------------------------------
    def select_hf_layout(self, model_config: Any, hf_names: Collection[str] | None) -> None:
        """Called before ``mapping_registry()`` whenever a model is loaded or exported: ``model_config``
        is the model's provider, ``hf_names`` the source checkpoint's tensor names on import (None on
        export). Override when one architecture has several HF tensor layouts (per-expert or stacked
        experts): pick by the names present, and record the choice in a provider field so that an
        export writes what the source had. No-op by default."""

    def mapping_registry(self) -> MegatronMappingRegistry:
        """Every parameter mapping of the architecture (``self.hf_config`` is set)."""
        raise NotImplementedError(f"{type(self).__name__} must implement mapping_registry()")

    def maybe_modify_loaded_hf_weight(
        self, hf_param: str | dict[str, str], hf_state_dict: Mapping[str, torch.Tensor]
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Read the HF tensor(s) a mapping needs; override to transform them (e.g. dequantize)."""
        if isinstance(hf_param, str):
            return hf_state_dict[hf_param]
        return {role: hf_state_dict[name] for role, name in hf_param.items()}

    def maybe_modify_converted_hf_weight(
        self,
        task: Any,
        converted_weights_dict: dict[str, torch.Tensor],
        hf_state_dict: Mapping[str, torch.Tensor] | None,
    ) -> dict[str, torch.Tensor]:
        """Adjust the HF tensors produced for one task on export; identity by default."""
        return converted_weights_dict
