"""Where a Megatron model stops matching transformers: module-by-module activations, side by side.

Both models run the same fixed input in fp32. Forward hooks record the output of each stage of a
decoder (embedding; per layer: input norm, attention, pre-MLP norm, MLP; final norm) under its HF
name (``model.layers.N.self_attn``) and its megatron-core ``GPTModel`` name
(``decoder.layers.N.self_attention``); the logits are compared last. The first stage whose
difference exceeds ``atol * max(1, max |reference|)`` is the divergence: a bad mapping or hook shows
up at the module that first reads the wrong tensor. Megatron activations are ``[s, b, h]`` and are
transposed to HF's ``[b, s, h]``. Modules a layer spec fuses away (Transformer Engine's norms inside
the linear layers) are reported as not observed. Tensor parallel works (every rank runs; rank 0
compares full activations); pipeline parallel does not (stages live on other ranks).

    report = diagnose_model(bridge, model, hf_model, input_ids)
    print(report.format())
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_ATOL = 1e-4
STAGES = (
    # (label, HF module under the layer, megatron-core module under the layer)
    ("input norm", "input_layernorm", "input_layernorm"),
    ("attention", "self_attn", "self_attention"),
    ("pre-MLP norm", "post_attention_layernorm", "pre_mlp_layernorm"),
    ("MLP", "mlp", "mlp"),
)


@dataclass(frozen=True)
class StagePair:
    """One compared stage: a label for people and the module names on both sides."""

    label: str
    hf: str
    megatron: str


@dataclass
class StageResult:
    pair: StagePair
    max_diff: float | None  # None: not observed on one side
    ref_max: float = 0.0
    note: str = ""

    def diverges(self, atol: float) -> bool:
        return self.max_diff is not None and not self.max_diff <= atol * max(1.0, self.ref_max)


@dataclass
class DiagnoseReport:
    """Every stage's result in forward order, and the first that diverges (None: no divergence)."""

    results: list[StageResult]
    atol: float
    first: StageResult | None = field(default=None)

    def format(self, action: str = "diagnose") -> str:
        lines = []
        for r in self.results:
            mark = " <- first divergence" if r is self.first else ""
            diff = f"max |d| {r.max_diff:.3g} (max |ref| {r.ref_max:.3g})" if r.max_diff is not None else ""
            diff = "; ".join(x for x in (diff, r.note) if x)
            lines.append(f"  {r.pair.label:<22} {r.pair.hf} <-> {r.pair.megatron}: {diff}{mark}")
        lines.append(f"{action}: {self.verdict()}")
        return "\n".join(lines)

    def verdict(self) -> str:
        if self.first is None:
            return f"no divergence (every observed stage within {self.atol:g} x max(1, |ref|))"
        r = self.first
        return (
            f"first divergence at {r.pair.label} ({r.pair.hf} <-> {r.pair.megatron}): "
            f"max |d| {r.max_diff:.3g}, max |ref| {r.ref_max:.3g}"
        )


def stage_pairs(num_layers: int, hf_prefix: str = "model.") -> list[StagePair]:
    """The compared stages of a decoder with ``num_layers`` layers, in forward order."""
    pairs = [StagePair("embedding", f"{hf_prefix}embed_tokens", "embedding")]
    for n in range(num_layers):
        for label, hf, megatron in STAGES:
            pairs.append(
                StagePair(f"layer {n} {label}", f"{hf_prefix}layers.{n}.{hf}", f"decoder.layers.{n}.{megatron}")
            )
    pairs.append(StagePair("final norm", f"{hf_prefix}norm", "decoder.final_layernorm"))
    return pairs


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # (output, bias) in megatron-core, (output, attention weights) in transformers
    return None


@contextmanager
def recorded(module: torch.nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named submodules of ``module`` during the block (the last call of each)."""
    found = dict(module.named_modules())
    out: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        sub = found.get(name)
        if sub is None or type(sub).__name__ == "IdentityOp":
            continue

        def hook(_mod, _inp, output, name=name):
            tensor = _first_tensor(output)
            if tensor is not None:
                out[name] = tensor.detach().float().clone()

        handles.append(sub.register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def _hf_prefix(hf_model: torch.nn.Module) -> str:
    """The prefix of the decoder's modules (``model.``), found from its ``embed_tokens``."""
    for name, _ in hf_model.named_modules():
        if name.endswith("embed_tokens"):
            return name[: -len("embed_tokens")]
    return "model."


def fixed_input(vocab_size: int, seq_length: int = 32) -> torch.Tensor:
    """A deterministic ``[1, seq_length]`` input of token ids (no tokenizer needed)."""
    return torch.arange(seq_length).mul(7919).remainder(vocab_size).unsqueeze(0)


@torch.no_grad()
def diagnose_model(
    model: Any,
    hf_model: torch.nn.Module | None,
    input_ids: torch.Tensor,
    vocab_size: int,
    atol: float = DEFAULT_ATOL,
) -> DiagnoseReport | None:
    """Compare ``model`` (this rank's megatron-core chunk, one pipeline stage) with ``hf_model``.

    Every rank of a tensor-parallel group calls this with the same ``input_ids`` ``[1, seq]``; rank 0
    passes the transformers model and gets the report, the others pass None and get None. Both
    models should be fp32.
    """
    import torch.distributed as dist

    from bridge_core.runtime.chunks import unwrap_chunks
    from bridge_core.runtime.inference import forward_logits

    chunks = unwrap_chunks(model)
    if len(chunks) != 1 or getattr(chunks[0].config, "pipeline_model_parallel_size", 1) != 1:
        from bridge_core.errors import ConfigError

        raise ConfigError("diagnose compares one model chunk: use --pp 1 (tensor parallel is fine)")
    prefix = _hf_prefix(hf_model) if hf_model is not None else "model."
    pairs = stage_pairs(chunks[0].config.num_layers, prefix)
    with recorded(chunks[0], [p.megatron for p in pairs]) as megatron_out:
        logits = forward_logits(chunks, input_ids, vocab_size=vocab_size).cpu()
    if hf_model is None or (dist.is_initialized() and dist.get_rank() != 0):
        return None
    with recorded(hf_model, [p.hf for p in pairs]) as hf_out:
        reference = hf_model(input_ids.to(next(hf_model.parameters()).device)).logits.float().cpu()
    results = [_compare(p, hf_out.get(p.hf), megatron_out.get(p.megatron), seq_first=True) for p in pairs]
    results.append(_compare(StagePair("output (logits)", "lm_head", "output_layer"), reference, logits, False))
    first = next((r for r in results if r.diverges(atol)), None)
    return DiagnoseReport(results, atol, first)


def _compare(pair: StagePair, hf: torch.Tensor | None, megatron: torch.Tensor | None, seq_first: bool) -> StageResult:
    if hf is None or megatron is None:
        side = "HF" if hf is None else "Megatron"
        return StageResult(pair, None, note=f"not observed on the {side} side (fused or absent module)")
    hf, megatron = hf.cpu(), megatron.cpu()
    if seq_first and megatron.dim() == 3:
        megatron = megatron.transpose(0, 1)  # [s, b, h] -> [b, s, h]
    if hf.shape != megatron.shape:
        return StageResult(
            pair, float("inf"), float(hf.abs().max()), note=f"shapes {tuple(hf.shape)} vs {tuple(megatron.shape)}"
        )
    return StageResult(pair, float((hf - megatron).abs().max()), float(hf.abs().max()))
