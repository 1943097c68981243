"""Model FLOPs per token, from a provider (a megatron-core ``TransformerConfig``).

Convention: Megatron-LM's ``num_floating_point_operations`` (``megatron/training/training.py``):
matrix multiplications only, 2 FLOPs per multiply-add; norms, softmax, RoPE, activations and the
embedding lookup are not counted. Causal attention counts half the score matrix: per layer and token
``QK^T`` and ``PV`` cost ``2 * 2 * heads * head_dim * seq / 2``. Beyond Megatron-LM: the MoE router
(``2 * hidden * experts``) and a shared-expert gate are counted, and a sliding window of ``w`` keys
(``window_size``, ``window_attn_skip_freq``) shortens the keys per query to ``w - w**2 / (2 * seq)``
(the same half-square rule, ``seq / 2`` at ``w = seq``). Training: 3x forward (forward, data and
weight gradients) plus what activation recompute runs again (``training_flops_per_token``).

Plugin blocks: a bridge whose decoder layers are not the standard ones names the block they use,
``FLOPS_DECODER_LAYER = "<block>"`` on its ``MegatronModelBridge`` subclass, and registers that block
with ``register_flops``. The registered function (``provider -> float``) then replaces the core's
count of every decoder layer's matrix multiplications that do not depend on the sequence (projections,
MLP or experts, router); the core still adds each layer's score/context term, the output logits and
the recompute. A block function taking a second argument gets the 1-indexed layer number (dense and
MoE layers of one model differ). Multi-token-prediction layers (``mtp_num_layers``) add ``eh_proj``, an
inner layer and their own logits each (``mtp_flops``; not part of a recompute). A bridge that names no
block gets the standard count.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bridge_core.errors import ConfigError, PluginError

BlockFlops = Callable[..., float]  # (provider) or (provider, 1-indexed layer number) -> FLOPs


class FlopsUnsupported(ConfigError):
    """The model has a block the core does not count and no plugin block covers."""


def _heads(c: Any) -> tuple[int, int, int]:
    heads = c.num_attention_heads
    return heads, c.num_query_groups or heads, c.kv_channels or c.hidden_size // heads


def attention_projection_flops(c: Any) -> float:
    """QKV (plus the output gate, when ``attention_output_gate``) and output projections."""
    heads, groups, d = _heads(c)
    qkv = c.hidden_size * (heads + 2 * groups) * d
    gate = c.hidden_size * heads * d if getattr(c, "attention_output_gate", False) else 0
    return 2.0 * (qkv + gate + heads * d * c.hidden_size)


def attended_keys(c: Any, seq_length: int, layer_number: int) -> float:
    """Keys per query under the half-square rule: ``seq / 2``, or less for a window (1-indexed layer)."""
    from megatron.core.transformer.utils import is_layer_window_attention

    window = getattr(c, "window_size", None)
    if window and is_layer_window_attention(window, getattr(c, "window_attn_skip_freq", None), layer_number):
        left = window[0]
        if 0 <= left < seq_length:
            return left - left * left / (2.0 * seq_length)
    return seq_length / 2.0


def attention_score_flops(c: Any, seq_length: int, layer_number: int = 1) -> float:
    """``QK^T`` and ``PV`` per token: ``2 * heads * (qk_dim + v_dim) * keys`` (``head_dim`` both; with
    multi-latent attention the query/key heads are ``qk_head_dim + qk_pos_emb_head_dim``, values ``v_head_dim``)."""
    heads, _, d = _heads(c)
    qk, v = d, d
    if getattr(c, "multi_latent_attention", False):
        qk, v = c.qk_head_dim + c.qk_pos_emb_head_dim, c.v_head_dim
    return 2.0 * heads * (qk + v) * attended_keys(c, seq_length, layer_number)


def mlp_flops(c: Any, ffn_hidden_size: int) -> float:
    """One MLP: ``hidden -> ffn`` (twice when gated) and ``ffn -> hidden``."""
    return 2.0 * c.hidden_size * ffn_hidden_size * (3 if c.gated_linear_unit else 2)


def moe_flops(c: Any) -> float:
    """Router, the ``moe_router_topk`` experts a token is sent to, and the shared experts (with their gate)."""
    h, experts = c.hidden_size, c.num_moe_experts
    routed = c.moe_router_topk * mlp_flops(c, c.moe_ffn_hidden_size or c.ffn_hidden_size)
    shared = c.moe_shared_expert_intermediate_size or 0
    shared_flops = mlp_flops(c, shared) + (2.0 * h if shared and getattr(c, "moe_shared_expert_gate", False) else 0)
    return 2.0 * h * experts + routed + shared_flops


def is_moe_layer(c: Any, layer_number: int) -> bool:
    """Whether layer ``layer_number`` (1-indexed) has experts, by ``moe_layer_freq`` (int or 0/1 list)."""
    if not c.num_moe_experts:
        return False
    freq = getattr(c, "moe_layer_freq", 1)
    if isinstance(freq, int):
        return (layer_number - 1) % freq == 0
    return bool(freq[layer_number - 1])


def standard_layer_flops(c: Any, layer_number: int = 1) -> float:
    """A standard decoder layer's sequence-independent FLOPs per token: attention projections, MLP or MoE."""
    ffn = moe_flops(c) if is_moe_layer(c, layer_number) else mlp_flops(c, c.ffn_hidden_size)
    return attention_projection_flops(c) + ffn


def logits_flops(c: Any) -> float:
    """The output layer over the padded vocabulary Megatron allocates."""
    vocab = getattr(c, "vocab_size_with_padding", None) or getattr(c, "padded_vocab_size", None) or c.vocab_size
    return 2.0 * c.hidden_size * vocab


def _check_standard(c: Any) -> None:
    for name, why in (
        ("multi_latent_attention", "multi-latent attention"),
        ("experimental_attention_variant", "an experimental attention variant"),
        ("moe_latent_size", "latent MoE"),
        ("heterogeneous_block_specs", "heterogeneous layers"),
    ):
        if getattr(c, name, None):
            raise FlopsUnsupported(
                f"FLOPs: {name} ({why}) is not counted by the core; the bridge can name a registered block "
                "(FLOPS_DECODER_LAYER)"
            )


def layer_flops(c: Any, layer_number: int, decoder_layer: BlockFlops | None = None) -> float:
    """Layer ``layer_number``'s sequence-independent FLOPs: the plugin block's (called with the 1-indexed layer
    number when it takes two arguments; MTP layers are numbered after the decoder's), else the standard count."""
    if decoder_layer is None:
        return standard_layer_flops(c, min(layer_number, c.num_layers))
    if len(inspect.signature(decoder_layer).parameters) >= 2:
        return float(decoder_layer(c, layer_number))
    return float(decoder_layer(c))


def mtp_flops(c: Any, seq_length: int, decoder_layer: BlockFlops | None = None) -> float:
    """Each multi-token-prediction layer (``mtp_num_layers``): ``eh_proj`` (``2 * hidden -> hidden``), its inner
    layer (the last decoder layer's kind, layer number ``num_layers + i + 1``) and its own output logits."""
    total = 0.0
    for i in range(getattr(c, "mtp_num_layers", None) or 0):
        n = c.num_layers + i + 1
        eh_proj = 2.0 * 2 * c.hidden_size * c.hidden_size
        total += eh_proj + layer_flops(c, n, decoder_layer) + attention_score_flops(c, seq_length, c.num_layers)
        total += logits_flops(c)
    return total


def forward_flops_per_token(c: Any, seq_length: int, decoder_layer: BlockFlops | None = None) -> float:
    """Forward FLOPs per token of the whole model (every pipeline stage, MTP layers included), at ``seq_length``.

    ``decoder_layer``: a plugin block's function, replacing ``standard_layer_flops`` for every layer.
    """
    if decoder_layer is None:
        _check_standard(c)
    total = logits_flops(c) + mtp_flops(c, seq_length, decoder_layer)
    for n in range(1, c.num_layers + 1):
        total += layer_flops(c, n, decoder_layer) + attention_score_flops(c, seq_length, n)
    return total


def _recomputed_layers(c: Any) -> list[int]:
    """The 1-indexed layers whose forward full recompute runs again."""
    layers = list(range(1, c.num_layers + 1))
    if c.recompute_method != "block":
        return layers  # uniform: every layer, in chunks of recompute_num_layers
    chunks = c.pipeline_model_parallel_size * (c.virtual_pipeline_model_parallel_size or 1)
    per_chunk = c.num_layers // chunks
    return [n for n in layers if (n - 1) % per_chunk < (c.recompute_num_layers or 0)]


def recompute_flops_per_token(c: Any, seq_length: int, decoder_layer: BlockFlops | None = None) -> float:
    """What activation recompute runs again in the backward pass, per token.

    ``full``: the recomputed layers' forward. ``selective``: ``core_attn`` (the score/context term),
    and for standard layers ``mlp``, ``moe`` and ``shared_experts``; other modules have no matmuls.
    """
    if c.recompute_granularity == "full":
        return sum(
            layer_flops(c, n, decoder_layer) + attention_score_flops(c, seq_length, n) for n in _recomputed_layers(c)
        )
    if c.recompute_granularity != "selective":
        return 0.0
    modules = c.recompute_modules or ["core_attn"]
    total = 0.0
    for n in range(1, c.num_layers + 1):
        if "core_attn" in modules:
            total += attention_score_flops(c, seq_length, n)
        if decoder_layer is not None:
            continue
        moe = is_moe_layer(c, n)
        if "mlp" in modules and not moe:
            total += mlp_flops(c, c.ffn_hidden_size)
        if "moe" in modules and moe:
            total += moe_flops(c)
        elif "shared_experts" in modules and moe:
            total += mlp_flops(c, c.moe_shared_expert_intermediate_size or 0)
    return total


def training_flops_per_token(
    c: Any, seq_length: int, decoder_layer: BlockFlops | None = None, frozen_weights: bool = False
) -> float:
    """3x forward plus the recomputed forward (what the GPUs execute per trained token).

    ``frozen_weights`` (PEFT): the frozen matmuls compute no weight gradient, 2x forward, while the
    attention's score/context products still take both gradients, 3x; the adapters' own small
    matmuls are not counted (Megatron-Bridge's LoRA convention).
    """
    forward = forward_flops_per_token(c, seq_length, decoder_layer)
    recompute = recompute_flops_per_token(c, seq_length, decoder_layer)
    if frozen_weights:
        scores = sum(attention_score_flops(c, seq_length, n) for n in range(1, c.num_layers + 1))
        return 2.0 * forward + scores + recompute
    return 3.0 * forward + recompute


def decoder_layer_block(bridge: Any, registry: Any = None) -> BlockFlops | None:
    """The registered function of the block ``bridge`` names (``FLOPS_DECODER_LAYER``), or None."""
    from bridge_core.plugins.discovery import get_registry
    from bridge_core.plugins.registry import import_target

    name = getattr(bridge, "FLOPS_DECODER_LAYER", None)
    if name is None:
        return None
    registry = registry or get_registry()
    reg = registry.flops.get(name)
    if reg is None:
        raise PluginError(
            f"{type(bridge).__name__}.FLOPS_DECODER_LAYER names the FLOPs block {name!r}, which no installed "
            f"plugin registers (registered: {', '.join(sorted(registry.flops)) or 'none'})"
        )
    try:
        return import_target(reg.function)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"FLOPs block {name!r} of {reg.distribution}: cannot import {reg.function} ({exc})") from exc


def model_training_flops_per_token(
    provider: Any, seq_length: int, bridge: Any = None, registry: Any = None, frozen_weights: bool = False
) -> float:
    """``training_flops_per_token`` with the block the bridge (a ``MegatronModelBridge``) names, if any."""
    block = decoder_layer_block(bridge, registry)
    return training_flops_per_token(provider, seq_length, block, frozen_weights)
