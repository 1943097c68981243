{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
{%- set base = cookiecutter.__family_title ~ 'DecoderBridge' -%}
{%- if cookiecutter.kind == 'LLM' -%}
"""{{ cookiecutter.__family_title }} bridges: Hugging Face {{ archs | join(', ') }} <-> Megatron-Core GPT.

Baked from bridge-core's plugin template for a standard pre-norm GPT-style decoder: RMSNorm, rotary
embeddings, grouped-query attention (QKV biases when the checkpoint has them), a gated SiLU MLP, and
HF's ``model.layers.N.{self_attn,mlp}`` names. ``DecoderBridge`` (bridge-core) holds the stock config
table and mappings; this module only adds what the family needs.

Whatever the stock decoder does not cover is refused, never converted approximately: a config key it
does not understand raises ``ConfigError`` naming it, and a tensor no mapping consumes fails the
coverage check naming the tensor. To add support (the plugin author guide has the details):
- a config key: an entry of ``CONFIG_MAPPING`` (both directions), of ``SUPPORTED_HF_CONFIG`` (the
  accepted values), or of ``HANDLED_HF_CONFIG`` plus code in ``hf_config_to_provider_kwargs`` and
  ``megatron_to_hf_config``;
- a tensor: a mapping in ``mapping_registry()``; subclass a ``bridge_core.mappings`` class in this
  package when a tensor needs its own format (never change bridge-core for one family);
- a new block (another attention, norm or MLP): modeling code in ``modeling_{{ cookiecutter.__model_slug }}/``,
  a provider whose layer spec uses it (``PROVIDER_CLASS``), and its FLOPs in ``flops.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bridge_core.model.decoder import DecoderBridge


def sliding_window_unused(value: Any, hf_config: Any) -> bool:
    """no sliding window: null, disabled by use_sliding_window=false, or at least max_position_embeddings"""
    if value is None or getattr(hf_config, "use_sliding_window", None) is False:
        return True
    if not isinstance(value, int):
        return False
    return value >= (getattr(hf_config, "max_position_embeddings", None) or 0)


def checkpoint_has_qkv_bias(hf_pretrained: Any) -> bool:
    """True when the checkpoint's tensors include q/k/v projection biases (False for a config alone)."""
    if getattr(hf_pretrained, "path", None) is None:
        return bool(getattr(hf_pretrained.config, "attention_bias", False))
    return any(name.endswith("self_attn.q_proj.bias") for name in hf_pretrained.weights)


class {{ base }}(DecoderBridge):
    """The stock decoder with the {{ cookiecutter.__family_title }} family's settings (shared by its architectures).

    ``QKV_BIAS``: ``None`` reads it from the checkpoint (``...self_attn.q_proj.bias`` tensors present);
    set ``True``/``False`` to pin it. Biases on other projections are refused by the coverage check.
    """

    QKV_BIAS: ClassVar[bool | None] = None
    SUPPORTED_HF_CONFIG: ClassVar[dict[str, Any]] = {
        **DecoderBridge.SUPPORTED_HF_CONFIG,
        "sliding_window": sliding_window_unused,
        "max_window_layers": sliding_window_unused,
    }

    def provider_bridge(self, hf_pretrained: Any):
        self.qkv_bias = self.QKV_BIAS if self.QKV_BIAS is not None else checkpoint_has_qkv_bias(hf_pretrained)
        return super().provider_bridge(hf_pretrained)

    def hf_config_to_provider_kwargs(self, hf_config: Any) -> dict[str, Any]:
        kwargs = super().hf_config_to_provider_kwargs(hf_config)
        kwargs["add_qkv_bias"] = bool(getattr(self, "qkv_bias", self.QKV_BIAS))
        return kwargs
{% for arch in archs %}

class {{ arch | replace('ForCausalLM', '') | replace('ForConditionalGeneration', '') }}Bridge({{ base }}):
    """``{{ arch }}`` (model_type ``{{ cookiecutter.model_type }}``)."""
{%- endfor %}
{% else -%}
"""{{ cookiecutter.__family_title }} bridges: Hugging Face {{ archs | join(', ') }} (vision-language) <-> Megatron-Core.

NOT IMPLEMENTED YET. The plugin template bakes a working bridge for standard decoders only; a
vision-language model needs more than the stock decoder, and this bridge refuses every conversion
with a ``ConfigError`` that says what is missing until it is written:
- a provider (``PROVIDER_CLASS``) that builds the vision tower, the projector and the language model
  (megatron-core's multimodal model, or modeling code in ``modeling_{{ cookiecutter.__model_slug }}/``);
- ``hf_config_to_provider_kwargs``/``megatron_to_hf_config`` for ``text_config`` (the stock
  ``DecoderBridge`` config table serves a standard language model) and for ``vision_config``;
- mappings in ``mapping_registry()`` for the vision tower, the projector and the language model
  (``DecoderBridge``'s literal tables, moved under the checkpoint's prefix by ``HF_PREFIX``);
- a toy config in ``tests/`` so that the conformance suite checks all of it.
"""

from __future__ import annotations

from typing import Any

from bridge_core.model.bridge import MegatronModelBridge
from bridge_core.errors import ConfigError

MISSING = (
    "is a vision-language model, and {{ cookiecutter.__project_slug }} does not translate it yet: a VLM bridge "
    "needs a provider building the vision tower, projector and language model, the text_config and "
    "vision_config translation, and mappings for the vision tower, projector and language-model tensors "
    "(see {{ cookiecutter.__module_name }}/bridge.py and modeling_{{ cookiecutter.__model_slug }}/)"
)


class {{ base }}(MegatronModelBridge):
    """Placeholder for the {{ cookiecutter.__family_title }} vision-language bridge: refuses with what is missing."""

    def provider_bridge(self, hf_pretrained: Any):
        raise ConfigError(f"{getattr(hf_pretrained, 'architecture', type(self).__name__)} {MISSING}")

    def mapping_registry(self):
        raise ConfigError(f"{type(self).__name__} {MISSING}")
{% for arch in archs %}

class {{ arch | replace('ForCausalLM', '') | replace('ForConditionalGeneration', '') }}Bridge({{ base }}):
    """``{{ arch }}`` (model_type ``{{ cookiecutter.model_type }}``): not implemented yet (see the module docstring)."""
{%- endfor %}
{% endif -%}
