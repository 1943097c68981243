"""Forward passes of megatron-core GPT chunks under tensor and pipeline parallelism (CPU or GPU)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError
from bridge_core.runtime.chunks import unwrap
from bridge_core.runtime.cpu_support import causal_mask


def _device(chunk: torch.nn.Module) -> torch.device:
    return next(chunk.parameters()).device


@torch.no_grad()
def forward_logits(model: Any, input_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` for ``input_ids`` ``[batch, seq]``, returned on every rank.

    Runs the pipeline stages in order (hidden states travel by point-to-point sends), gathers
    vocabulary-parallel logits across tensor parallel ranks, trims padded vocabulary rows to
    ``vocab_size`` and broadcasts the result from the last stage.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    chunks = [unwrap(c) for c in (model if isinstance(model, (list, tuple)) else [model])]
    for c in chunks:
        c.eval()
    device = _device(chunks[0])
    config = chunks[0].config
    if config.sequence_parallel or getattr(config, "context_parallel_size", 1) > 1:
        raise ConfigError("forward_logits supports tensor and pipeline parallelism only (no sequence/context parallel)")
    batch, seq = input_ids.shape
    input_ids = input_ids.to(device)
    position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(batch, -1)
    mask = causal_mask(seq, device)
    pp, stage = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    hidden_shape = (seq, batch, config.hidden_size)
    logits = None
    for v, chunk in enumerate(chunks):
        for s in range(pp):
            if s != stage:
                continue
            first, last = v == 0 and s == 0, v == len(chunks) - 1 and s == pp - 1
            if not first:
                hidden = torch.empty(hidden_shape, dtype=config.params_dtype, device=device)
                dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
                chunk.set_input_tensor(hidden)
            out = chunk(input_ids, position_ids, mask)
            if last:
                logits = out
            else:
                dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
    # Every rank learns the logits from the last stage's first tensor-parallel rank.
    if logits is not None:
        if ps.get_tensor_model_parallel_world_size() > 1 and chunks[-1].parallel_output:
            logits = gather_from_tensor_model_parallel_region(logits)
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        logits = logits.float().contiguous()
    if dist.is_initialized() and dist.get_world_size() > 1:
        src = first_rank_where(
            logits is not None and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0, device
        )
        shape = torch.tensor(list(logits.shape) if logits is not None else [0, 0, 0], device=device)
        dist.broadcast(shape, src=src)
        if logits is None:
            logits = torch.empty(tuple(shape.tolist()), dtype=torch.float32, device=device)
        dist.broadcast(logits, src=src)
    return logits


def first_rank_where(flag: bool, device: torch.device) -> int:
    """The lowest global rank for which ``flag`` is true (every rank must call this)."""
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int64, device=device)
    flags[dist.get_rank()] = int(flag)
    dist.all_reduce(flags)
    return int(torch.nonzero(flags)[0])
