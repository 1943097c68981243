"""Forward passes of megatron-core GPT chunks under tensor and pipeline parallelism (CPU or GPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError
from bridge_core.runtime.chunks import unwrap_chunks
from bridge_core.runtime.cpu_support import causal_mask


def pipeline_forward(
    chunks: list[torch.nn.Module],
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor | None,
    chunk_kwargs: Callable[[int], dict[str, Any]] | None = None,
) -> torch.Tensor | None:
    """One forward pass of this rank's ``chunks`` (unwrapped) in pipeline order, on every rank.

    Each chunk but the model's first receives its hidden states ``[seq, batch, hidden]`` from the
    previous stage (point-to-point, in ``pipeline_dtype``, else ``params_dtype``); each but the model's
    last sends its output to the next stage (virtual stages wrap around). Returns the output of the
    model's last chunk on the last stage, None elsewhere. ``chunk_kwargs(v)``: extra keyword arguments
    of chunk ``v``'s forward. Shared by ``forward_logits`` and greedy generation.
    """
    from megatron.core import parallel_state as ps

    pp, stage = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    config = chunks[0].config
    batch, seq = input_ids.shape
    hidden_dtype = config.pipeline_dtype or config.params_dtype
    out = None
    for v, chunk in enumerate(chunks):
        first, last = v == 0 and stage == 0, v == len(chunks) - 1 and stage == pp - 1
        if not first:
            hidden = torch.empty((seq, batch, config.hidden_size), dtype=hidden_dtype, device=input_ids.device)
            dist.recv(hidden, src=ps.get_pipeline_model_parallel_prev_rank())
            chunk.set_input_tensor(hidden)
        out = chunk(input_ids, position_ids, mask, **(chunk_kwargs(v) if chunk_kwargs else {}))
        if not last:
            dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            out = None
    return out


@torch.no_grad()
def forward_logits(model: Any, input_ids: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
    """Logits ``[batch, seq, vocab]`` for ``input_ids`` ``[batch, seq]``, returned on every rank.

    Runs the pipeline stages in order (``pipeline_forward``), gathers vocabulary-parallel logits
    across tensor parallel ranks, trims padded vocabulary rows to ``vocab_size`` and broadcasts the
    result from the last stage.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    chunks = unwrap_chunks(model)
    for c in chunks:
        c.eval()
    device = next(chunks[0].parameters()).device
    config = chunks[0].config
    if config.sequence_parallel or getattr(config, "context_parallel_size", 1) > 1:
        raise ConfigError("forward_logits supports tensor and pipeline parallelism only (no sequence/context parallel)")
    batch, seq = input_ids.shape
    input_ids = input_ids.to(device)
    position_ids = torch.arange(seq, device=device).unsqueeze(0).expand(batch, -1)
    logits = pipeline_forward(chunks, input_ids, position_ids, causal_mask(seq, device))
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
