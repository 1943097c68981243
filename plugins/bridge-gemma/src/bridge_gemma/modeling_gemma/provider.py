"""``GemmaModelProvider``: megatron-core's local layer spec with Gemma's norms, attention and scalings.

- every norm (``input_layernorm``, ``pre_mlp_layernorm``, the final norm) is ``GemmaRMSNorm``
  (zero-centred while ``layernorm_zero_centered_gamma``);
- ``sandwich_norms`` (Gemma 2): ``linear_proj`` and ``linear_fc2`` carry a post-norm;
- the core attention is ``bridge_core.modeling``'s ``SDPACoreAttention`` (exact sliding windows),
  with ``attn_logit_softcap`` (``cap * tanh(s / cap)`` before the mask) when set;
- ``scale_embeddings``: the embedding output times sqrt(hidden) rounded to the embedding weight's
  dtype, as transformers does (``torch.tensor(hidden**0.5, dtype=...)``);
- ``final_logit_softcap``: the output layer's logits become ``cap * tanh(logits / cap)``;
- ``local_rotary_base`` (Gemma 3): windowed layers rotate with this base (``DualRopeSelfAttention``),
  the others with ``rotary_base`` and its scaling; ``qk_layernorm`` norms are ``GemmaRMSNorm`` per head.
The activation is fixed (``gelu(approximate="tanh")``), so it is not a constructor argument and never
travels in a Megatron checkpoint's run config.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bridge_core.errors import ConfigError
from bridge_core.model.mcore_versions import mlp_submodules
from bridge_core.model.provider import GPTModelProvider
from bridge_core.modeling.specs import install_core_attention
from bridge_gemma.modeling_gemma.attention import DualRopeSelfAttention
from bridge_gemma.modeling_gemma.norm import GemmaRMSNorm, PostNormRowParallelLinear, gelu_tanh


def _scale_embedding_output(module, inputs, output):
    normalizer = torch.tensor(module.config.hidden_size**0.5, dtype=module.word_embeddings.weight.dtype)
    return output * normalizer.to(output.device, output.dtype)


def _softcap_output(cap: float):
    def hook(module, inputs, output):
        logits, bias = output
        return cap * torch.tanh(logits / cap), bias

    return hook


@dataclass
class GemmaModelProvider(GPTModelProvider):
    """A ``GPTModelProvider`` building Gemma 1/2/3 decoders on the local spec (see the module docstring)."""

    activation_func: Callable = field(default=None, init=False)
    layernorm_zero_centered_gamma: bool = True
    scale_embeddings: bool = True
    sandwich_norms: bool = False
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    local_rotary_base: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.activation_func = gelu_tanh  # an instance attribute: a class-level function would bind as a method

    def layer_spec(self, vp_stage: int | None = None):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
        from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

        if self.transformer_layer_spec not in ("auto", "local"):
            raise ConfigError(
                f"transformer_layer_spec={self.transformer_layer_spec!r} is not supported by bridge-gemma "
                "(it builds megatron-core's local spec with its own norms and attention: use 'auto' or 'local')"
            )
        layer = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=self.qk_layernorm, normalization="RMSNorm"))
        subs = layer.submodules
        subs.input_layernorm = subs.pre_mlp_layernorm = GemmaRMSNorm
        if self.qk_layernorm:
            subs.self_attention.submodules.q_layernorm = GemmaRMSNorm
            subs.self_attention.submodules.k_layernorm = GemmaRMSNorm
        if self.local_rotary_base is not None:
            subs.self_attention.module = DualRopeSelfAttention
        if self.sandwich_norms:
            subs.self_attention.submodules.linear_proj = PostNormRowParallelLinear
            mlp_submodules(subs.mlp).linear_fc2 = PostNormRowParallelLinear
        options = {} if self.attn_logit_softcap is None else {"logit_softcap": float(self.attn_logit_softcap)}
        layer = install_core_attention(layer, **options)
        layers = get_num_layers_to_build(self, vp_stage=vp_stage)
        return TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=GemmaRMSNorm)

    def provide(self, pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None):
        model = super().provide(pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
        if self.scale_embeddings and model.pre_process:
            model.embedding.register_forward_hook(_scale_embedding_output)
        if self.final_logit_softcap is not None and model.post_process:
            model.output_layer.register_forward_hook(_softcap_output(float(self.final_logit_softcap)))
        return model
