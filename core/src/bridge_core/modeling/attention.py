"""``SDPACoreAttention``: megatron-core's core attention over ``F.scaled_dot_product_attention``.

A drop-in for the local spec's ``DotProductAttention`` (same constructor and forward signature,
``self_attention.submodules.core_attention``): queries, keys and values ``[s, b, heads, d]`` in,
``[s, b, heads_local * d]`` out, heads local to this tensor-parallel rank. It never materialises
``[b, h, s, s]`` scores itself (SDPA picks a fused kernel), and it applies a sliding window exactly on
any device, where the local module builds its window mask on ``"cuda"`` (a CPU failure) and its fused
softmax drops the window on GPU in fp16/bf16.

Masks: megatron-core's (bool, True = masked, broadcastable to ``[b, h, sq, sk]``). A plain causal
mask (or none, with a causal mask type) runs as ``is_causal=True``; a window ``(left, right)`` on this
layer (``config.window_size``, layer pattern ``config.window_attn_skip_freq``) lets query ``i`` see keys
``i - left .. i + right``, on top of causality and of any mask given; keys longer than queries (a KV
cache) are aligned at the end, as in megatron-core.

Extension point: ``attend(q, k, v, masked, is_causal)`` does the softmax attention on ``[b, h, s, d]``
tensors. Families whose scores need changing before the softmax (attention logit soft-capping, sinks)
pass options through the layer spec (``install_core_attention(spec, logit_softcap=50.0)``): any
option moves the computation to ``eager_attend``, the explicit ``softmax(scale * q k^T) v``, whose
``modify_scores`` and ``softmax`` methods a subclass overrides (sinks: an extra logit per head in the
softmax). Soft-capping (``cap * tanh(scores / cap)`` before the mask, Gemma 2) is built in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention
from megatron.core.utils import divide
from torch import Tensor

from bridge_core.errors import ConfigError

CAUSAL_TYPES = (AttnMaskType.causal, AttnMaskType.padding_causal)


def window_mask(sq: int, sk: int, window: tuple[int, int], device: torch.device) -> Tensor:
    """Bool ``[sq, sk]``, True = masked: query ``i`` (at position ``sk - sq + i``) sees keys within ``window``.

    ``window = (left, right)``: keys ``pos - left .. pos + right``; ``(sk, 0)`` is plain causality.
    The same mask as megatron-core's ``get_sliding_window_causal_mask``, built on ``device``.
    """
    pos = torch.arange(sq, device=device)[:, None] + (sk - sq)
    key = torch.arange(sk, device=device)[None, :]
    return (key < pos - window[0]) | (key > pos + window[1])


def is_plain_causal(mask: Tensor, sq: int, sk: int) -> bool:
    """Whether ``mask`` (True = masked) is exactly the square causal mask, broadcast over batch and heads."""
    if sq != sk or mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[-2:] != (sq, sk):
        return False
    return bool(torch.equal(mask, window_mask(sq, sk, (sk, 0), mask.device).expand_as(mask)))


class SDPACoreAttention(MegatronModule):
    """Core attention over ``scaled_dot_product_attention`` (see the module docstring).

    Softmax scale ``softmax_scale`` (``config.softmax_scale`` from ``SelfAttention``) or
    ``1/sqrt(kv_channels)``; dropout ``config.attention_dropout`` (or ``attention_dropout``) in training
    mode only; grouped-query attention by repeating each KV head over its query heads.
    ``apply_query_key_layer_scaling`` changes nothing here (the local module divides the scores by the
    layer number and multiplies them back in an fp32 softmax). Not supported: context parallelism,
    packed (THD) sequences, an additive ``attention_bias``, ``softmax_type`` other than ``"vanilla"``
    (sinks: subclass, list the type in ``SOFTMAX_TYPES`` and override ``softmax``).
    """

    # ``config.softmax_type`` values this class computes; a subclass with sinks adds its own.
    SOFTMAX_TYPES: tuple[str, ...] = ("vanilla",)

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
        logit_softcap: float | None = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ConfigError("SDPACoreAttention: context_parallel_size > 1 is not supported")
        if config.softmax_type not in self.SOFTMAX_TYPES:
            raise ConfigError(f"SDPACoreAttention: softmax_type={config.softmax_type!r} is not supported")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection = pg_collection
        self.tp_group = pg_collection.tp
        tp = pg_collection.tp.size()
        self.head_dim = config.kv_channels
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, tp)
        self.num_query_groups_per_partition = divide(config.num_query_groups or config.num_attention_heads, tp)
        self.hidden_size_per_partition = self.num_attention_heads_per_partition * self.head_dim
        self.softmax_scale = 1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        layer_has_window = is_layer_window_attention(config.window_size, config.window_attn_skip_freq, layer_number)
        self.window: tuple[int, int] | None = tuple(config.window_size) if layer_has_window else None
        self.logit_softcap = logit_softcap

    @property
    def eager(self) -> bool:
        """True when an option needs the scores themselves (``eager_attend`` instead of SDPA)."""
        return self.logit_softcap is not None

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: Tensor | None = None,
        packed_seq_params=None,
    ) -> Tensor:
        """``[sq, b, np, d]``, ``[sk, b, ng, d]`` x2 -> ``[sq, b, np * d]``."""
        if packed_seq_params is not None:
            raise ConfigError("SDPACoreAttention: packed sequences (packed_seq_params) are not supported")
        if attention_bias is not None:
            raise ConfigError("SDPACoreAttention: attention_bias is not supported")
        sq, batch, sk = query.size(0), query.size(1), key.size(0)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, h, s, d]
        repeat = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        masked, is_causal = self.effective_mask(attention_mask, attn_mask_type or self.attn_mask_type, sq, sk, q.device)
        if self.training and self.dropout_p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                out = self.attend(q, k, v, masked, is_causal)
        else:
            out = self.attend(q, k, v, masked, is_causal)
        return out.permute(2, 0, 1, 3).reshape(sq, batch, self.hidden_size_per_partition)

    def effective_mask(
        self, mask: Tensor | None, mask_type: AttnMaskType, sq: int, sk: int, device: torch.device
    ) -> tuple[Tensor | None, bool]:
        """``(masked, is_causal)``: the bool mask to apply (True = masked), or None with ``is_causal``."""
        if self.window is not None:
            window = window_mask(sq, sk, self.window, device)
            return (window if mask is None else mask | window), False
        if mask is None:
            if mask_type in CAUSAL_TYPES and sq > 1:
                return (None, True) if sq == sk else (window_mask(sq, sk, (sk, 0), device), False)
            return None, False
        if is_plain_causal(mask, sq, sk):
            return None, True
        return mask, False

    def attend(self, q: Tensor, k: Tensor, v: Tensor, masked: Tensor | None, is_causal: bool) -> Tensor:
        """Softmax attention on ``[b, h, s, d]`` tensors; ``masked`` True = excluded."""
        if self.eager:
            return self.eager_attend(q, k, v, masked, is_causal)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if masked is None else ~masked,
            dropout_p=self.dropout_p if self.training else 0.0,
            is_causal=is_causal,
            scale=self.softmax_scale,
        )

    def eager_attend(self, q: Tensor, k: Tensor, v: Tensor, masked: Tensor | None, is_causal: bool) -> Tensor:
        """The explicit path: scores, ``modify_scores``, mask, ``softmax`` (fp32), dropout, values."""
        scores = self.modify_scores(torch.matmul(q, k.transpose(-1, -2)).float() * self.softmax_scale)
        if is_causal:
            masked = window_mask(q.size(2), k.size(2), (k.size(2), 0), q.device)
        if masked is not None:
            scores = scores.masked_fill(masked, float("-inf"))
        probs = self.softmax(scores).to(v.dtype)
        probs = F.dropout(probs, p=self.dropout_p, training=self.training)
        return torch.matmul(probs, v)

    def modify_scores(self, scores: Tensor) -> Tensor:
        """Scaled fp32 scores ``[b, h, sq, sk]`` before the mask: soft-capping when ``logit_softcap`` is set."""
        if self.logit_softcap is not None:
            scores = self.logit_softcap * torch.tanh(scores / self.logit_softcap)
        return scores

    def softmax(self, scores: Tensor) -> Tensor:
        """Masked scores -> probabilities over the keys (override for sinks: an extra logit per head)."""
        return torch.softmax(scores, dim=-1)
