"""Padded vocabulary rows take no probability in training: their logits are ``-inf`` before the loss.

megatron-core allocates the vocabulary as a multiple of ``make_vocab_size_divisible_by`` x TP. The
padded rows of a model converted from HF are zero, so their logits (0) would enter the softmax and the
loss would not be transformers' (6.20 against 5.91 on a 272-token toy padded to 384). A forward hook
on the output layer masks the padded columns of the rank's logit shard; the real columns, and their
gradients, are untouched.
"""

from __future__ import annotations

from typing import Any

import torch

from bridge_core.runtime.chunks import unwrap


def mask_padded_vocabulary(chunks: list, vocab_size: int) -> list:
    """Install the mask on every chunk's output layer (the last pipeline stage's); returns ``chunks``."""
    from megatron.core import parallel_state as ps

    for chunk in chunks:
        model = unwrap(chunk)
        layer = getattr(model, "output_layer", None)
        if layer is None or not getattr(model, "post_process", True):
            continue
        shard = model.vocab_size // ps.get_tensor_model_parallel_world_size()
        first = vocab_size - ps.get_tensor_model_parallel_rank() * shard  # first padded column of this shard
        if first < shard:
            layer.register_forward_hook(_masking_hook(max(first, 0), shard))
    return chunks


def _masking_hook(first: int, shard: int):
    masks: dict[torch.device, torch.Tensor] = {}  # built once per device (no host copy every forward)

    def hook(module: Any, inputs: Any, output: Any) -> Any:
        logits, bias = output
        if logits.device not in masks:
            masks[logits.device] = torch.arange(shard, device=logits.device) >= first
        return logits.masked_fill(masks[logits.device], float("-inf")), bias

    return hook
