"""A Megatron checkpoint against its HF source: every exported tensor bit for bit, then fp32 logits.

``bridgectl verify`` (and ``roundtrip``) run these steps and print their results. Every rank calls
each step (one process per rank); the comparisons are returned on rank 0, None on the others.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from bridge_core.conversion.finite import nonfinite_logits
from bridge_core.conversion.jobs import LoadedCheckpoint
from bridge_core.conversion.workflows import load_checkpoint
from bridge_core.progress import stage
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallelism import Parallelism, rank

PROMPT_IDS = 64  # tokens of the fixed prompt


def fixed_prompt(vocab_size: int) -> torch.Tensor:
    """A deterministic prompt ``[1, PROMPT_IDS]`` of token ids (no tokenizer needed)."""
    return torch.arange(PROMPT_IDS).mul(7919).remainder(vocab_size).unsqueeze(0)


@dataclass(frozen=True)
class TensorComparison:
    """The exported tensors against the source's: ``differing`` were exported but are not the
    source's to the bit (another dtype, other values, or a name the source lacks); ``missing`` are
    the source's tensors the checkpoint did not export."""

    source: int
    exported: int
    differing: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def identical(self) -> int:
        return self.exported - len(self.differing)

    @property
    def ok(self) -> bool:
        return not self.differing and not self.missing


@dataclass(frozen=True)
class LogitsComparison:
    """fp32 logits of the Megatron model and of transformers on ``fixed_prompt``: the largest and mean
    absolute difference; ``nonfinite`` says why they cannot match when either holds NaN/Inf."""

    max_diff: float
    mean_diff: float
    atol: float
    nonfinite: str | None = None

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.atol  # False for NaN


def load_for_verify(
    megatron_path: str | Path, parallel: Parallelism, hf_model: str | Path, accept_config: Iterable[str] = ()
) -> LoadedCheckpoint:
    """The checkpoint built in fp32 for the logits (a bf16 checkpoint loads exactly into fp32
    parameters); its tensors export in the dtype they were saved in, so the comparison stays bit-exact."""
    stage("verify", f"loading {megatron_path}")
    return load_checkpoint(megatron_path, parallel, hf_model, dtype=torch.float32, accept_config=accept_config)


def compare_tensors(loaded: LoadedCheckpoint) -> TensorComparison | None:
    """Every tensor the checkpoint exports against the bridge's HF source (the export's collectives run
    on every rank; the result on rank 0)."""
    stage("verify", "comparing every exported tensor with the source")
    source = loaded.bridge.hf.weights
    differing, seen = [], set()
    for name, tensor in loaded.bridge.export_hf_weights(loaded.model, to_rank=0, dtype=loaded.saved_dtype):
        seen.add(name)
        if name not in source or source.meta[name].dtype != tensor.dtype or not torch.equal(source[name], tensor):
            differing.append(name)
    if rank() != 0:
        return None
    return TensorComparison(len(source), len(seen), tuple(differing), tuple(sorted(set(source) - seen)))


def compare_logits(loaded: LoadedCheckpoint, hf_model: str | Path, atol: float) -> LogitsComparison | None:
    """Megatron's fp32 logits (every rank) against transformers' on the CPU (rank 0, which gets the result)."""
    vocab = loaded.bridge.hf_config.vocab_size
    ids = fixed_prompt(vocab)
    stage("verify", "Megatron forward (fp32)")
    logits = forward_logits(loaded.model, ids, vocab_size=vocab).cpu()  # the reference runs on the CPU
    if rank() != 0:
        return None
    from transformers import AutoModelForCausalLM

    stage("verify", "transformers reference: loading and forward (fp32)")
    reference = AutoModelForCausalLM.from_pretrained(str(hf_model), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(ids).logits.float()
        diff = (logits - expected).abs()
    return LogitsComparison(
        diff.max().item(), diff.mean().item(), atol, nonfinite_logits(Megatron=logits, transformers=expected)
    )
