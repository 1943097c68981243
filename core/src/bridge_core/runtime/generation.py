"""Greedy text generation with megatron-core GPT chunks under tensor and pipeline parallelism (CPU or GPU).

With ``use_cache=True`` (the default) each model chunk keeps its attention keys and values in a
megatron-core ``StaticInferenceContext``: one prefill pass over the prompt, then one token per step.
With ``use_cache=False`` every step recomputes the whole sequence (slower; the plain reference).

Every rank of the model-parallel world calls the same function with the same prompt. Hidden states
travel between pipeline stages by point-to-point sends (``bridge_core.runtime.inference.pipeline_forward``,
the loop ``forward_logits`` runs too); the last stage picks the token (argmax over the real vocabulary,
padded columns excluded) and broadcasts it, so the generated tokens are identical on every rank.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError
from bridge_core.runtime.chunks import unwrap_chunks
from bridge_core.runtime.cpu_support import causal_mask
from bridge_core.runtime.inference import first_rank_where, pipeline_forward


@dataclass(frozen=True)
class GenerationResult:
    """What ``timed_greedy_generate`` returns (the same on every rank).

    ``tokens``: prompt plus generated tokens, ``[1, prompt_length + new_tokens]``, on the prompt's
    device. ``seconds``: wall time of the whole generation (prefill included); ``prefill_seconds``:
    the time to the first new token.
    """

    tokens: torch.Tensor
    prompt_length: int
    new_tokens: int
    seconds: float
    prefill_seconds: float

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of the whole generation (prefill included)."""
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens per second after the first one (the steady decode rate)."""
        decode = self.seconds - self.prefill_seconds
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else float("nan")


def _eos_set(eos_token_id: int | Iterable[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    if isinstance(eos_token_id, int):
        return {eos_token_id}
    return {int(t) for t in eos_token_id}


def _static_context(batch: int, max_length: int) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from megatron.core.inference.contexts import StaticInferenceContext

    return StaticInferenceContext(max_batch_size=batch, max_sequence_length=max_length)


class _Runner:
    """One forward step through this rank's chunks; the chosen token is broadcast to every rank."""

    def __init__(self, model: Any, vocab_size: int | None):
        from megatron.core import parallel_state as ps

        self.chunks = unwrap_chunks(model)
        self.device = next(self.chunks[0].parameters()).device
        self.config = self.chunks[0].config
        if getattr(self.config, "sequence_parallel", False):
            raise ConfigError("greedy_generate does not support sequence_parallel=True; build the model without it")
        if vocab_size is None:
            vocab_size = getattr(self.config, "vocab_size", None)  # GPTModelProvider: the unpadded vocabulary
        self.vocab_size = vocab_size
        self.is_last = ps.get_pipeline_model_parallel_rank() == ps.get_pipeline_model_parallel_world_size() - 1
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.src = 0
        if self.distributed:
            # The token comes from the last stage's first tensor-parallel rank of data-parallel replica 0.
            flag = self.is_last and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
            self.src = first_rank_where(flag, self.device)

    def step(self, input_ids: torch.Tensor, start: int, contexts: list | None) -> torch.Tensor:
        """Run ``input_ids`` ``[b, s]`` (positions ``start..start+s-1``) and return the greedy next token ``[b, 1]``.

        With ``contexts`` (one ``StaticInferenceContext`` per chunk) the keys and values are cached and
        each context's offset is advanced by ``s``; without, ``input_ids`` must be the whole sequence.
        """
        batch, seq = input_ids.shape
        position_ids = torch.arange(start, start + seq, device=self.device).unsqueeze(0).expand(batch, -1)
        # A prefill (or a full recompute) needs the causal mask; a cached decode step attends to everything.
        mask = causal_mask(seq, self.device) if start == 0 else None

        def chunk_kwargs(v: int) -> dict[str, Any]:
            kwargs: dict[str, Any] = {"runtime_gather_output": True}
            if contexts is not None:
                kwargs["inference_context"] = contexts[v]
            return kwargs

        logits = pipeline_forward(self.chunks, input_ids, position_ids, mask, chunk_kwargs)
        if contexts is not None:
            for ctx in contexts:
                ctx.sequence_len_offset += seq
                ctx.enable_decode_mode()
        token = torch.empty((batch, 1), dtype=torch.long, device=self.device)
        if logits is not None:
            last_logits = logits[:, -1, : self.vocab_size] if self.vocab_size is not None else logits[:, -1]
            token = last_logits.float().argmax(-1, keepdim=True)
        if self.distributed:
            dist.broadcast(token, src=self.src)
        return token


@torch.no_grad()
def timed_greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | Iterable[int] | None = None,
    vocab_size: int | None = None,
    use_cache: bool = True,
) -> GenerationResult:
    """``greedy_generate`` that also reports timings (see ``GenerationResult``)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape [1, seq] (one prompt), got {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is empty: the prompt needs at least one token")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    runner = _Runner(model, vocab_size)
    eos = _eos_set(eos_token_id)
    prompt_length = input_ids.shape[1]
    training = [c.training for c in runner.chunks]
    for c in runner.chunks:
        c.eval()
    new: list[int] = []
    start = time.perf_counter()
    prefill_seconds = 0.0
    try:
        ids = input_ids.to(runner.device)
        contexts = None
        if use_cache:
            contexts = [_static_context(1, prompt_length + max_new_tokens) for _ in runner.chunks]
        step_input, offset = ids, 0
        while len(new) < max_new_tokens:
            token = runner.step(step_input, offset, contexts)
            new.append(int(token.item()))
            if len(new) == 1:
                prefill_seconds = time.perf_counter() - start
            if new[-1] in eos:
                break
            if use_cache:
                offset += step_input.shape[1]
                step_input = token
            else:
                step_input = torch.cat([step_input, token], dim=1)
        if runner.device.type == "cuda":
            torch.cuda.synchronize(runner.device)
    finally:
        for c, mode in zip(runner.chunks, training):
            c.train(mode)
    seconds = time.perf_counter() - start
    generated = torch.tensor([new], dtype=input_ids.dtype, device=input_ids.device)
    return GenerationResult(
        tokens=torch.cat([input_ids, generated], dim=1),
        prompt_length=prompt_length,
        new_tokens=len(new),
        seconds=seconds,
        prefill_seconds=prefill_seconds,
    )


def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    eos_token_id: int | Iterable[int] | None = None,
    vocab_size: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Greedy continuation of ``input_ids`` ``[1, seq]``: the prompt plus up to ``max_new_tokens`` tokens.

    ``model``: this rank's megatron-core GPT chunk or list of chunks (DDP-wrapped is fine), under any
    tensor / pipeline (and virtual pipeline) parallel layout; every rank of the model-parallel world
    must call this with the same prompt and gets the same ``[1, seq + n]`` tensor back, on the
    prompt's device. Generation stops after ``max_new_tokens`` or right after an ``eos_token_id``
    (which is included, as in transformers). ``vocab_size``: columns at and beyond it (Megatron's
    vocabulary padding) never win the argmax; default: the provider's unpadded ``vocab_size``.
    ``use_cache=False`` recomputes the whole sequence at every step instead of using the KV cache.
    """
    return timed_greedy_generate(
        model,
        input_ids,
        max_new_tokens,
        eos_token_id=eos_token_id,
        vocab_size=vocab_size,
        use_cache=use_cache,
    ).tokens
