"""``bridgectl verify``: a Megatron checkpoint against its HF source (logits and every tensor)."""

from __future__ import annotations

import argparse
import sys

from bridge_core.checkpoints.hf_source import hf_source
from bridge_core.cli.common import (
    add_accept_config_arg,
    add_parallel_args,
    parallelism,
    positive_float,
    precheck_checkpoint,
    precheck_hf,
    run_on_ranks,
)

PROMPT_IDS = 64  # tokens of the fixed prompt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="the HF source (folder or GGUF file)")
    parser.add_argument("--megatron-path", required=True, help="checkpoint to verify")
    parser.add_argument("--atol", type=positive_float, default=1e-4, help="largest |logit difference| accepted (fp32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that need remote code")
    add_accept_config_arg(parser)
    add_parallel_args(parser)


def run(args: argparse.Namespace) -> int:
    parallel = parallelism(args)
    precheck_checkpoint(args.megatron_path)
    with hf_source(args.hf_model, "verify") as folder:
        precheck_hf(folder, args.trust_remote_code)
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        return verify(folder, args.megatron_path, parallel, args.atol, args.accept_config)


def fixed_prompt(vocab_size: int):
    """A deterministic prompt of ``PROMPT_IDS`` token ids (no tokenizer needed)."""
    import torch

    return torch.arange(PROMPT_IDS).mul(7919).remainder(vocab_size).unsqueeze(0)


def verify(folder, megatron_path: str, parallel, atol: float, accept_config=()) -> int:
    """Bit-equality of every exported tensor, then fp32 logits against transformers. 0: all good."""
    import torch

    from bridge_core.conversion.finite import nonfinite_logits
    from bridge_core.conversion.workflows import load_checkpoint, say
    from bridge_core.progress import stage
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallel import rank

    stage("verify", f"loading {megatron_path}")
    # Built in fp32 for the logits (a bf16 checkpoint loads exactly into fp32 parameters); the
    # tensors are exported in the dtype they were saved in, so the comparison stays bit-exact.
    loaded = load_checkpoint(megatron_path, parallel, folder, dtype=torch.float32, accept_config=accept_config)
    stage("verify", "comparing every exported tensor with the source")
    source = loaded.bridge.hf.weights
    mismatched, seen = [], set()
    for name, tensor in loaded.bridge.export_hf_weights(loaded.model, to_rank=0, dtype=loaded.saved_dtype):
        seen.add(name)
        if name not in source or source.meta[name].dtype != tensor.dtype or not torch.equal(source[name], tensor):
            mismatched.append(name)
    if rank() == 0:
        missing = sorted(set(source) - seen)
        say(
            f"verify: tensors: {len(seen) - len(mismatched)}/{len(source)} bit-identical"
            + (f"; differing: {', '.join(mismatched[:5])}" if mismatched else "")
            + (f"; missing from checkpoint: {', '.join(missing[:5])}" if missing else "")
        )
        mismatched += missing
    vocab = loaded.bridge.hf_config.vocab_size
    ids = fixed_prompt(vocab)
    stage("verify", "Megatron forward (fp32)")
    logits = forward_logits(loaded.model, ids, vocab_size=vocab).cpu()  # the reference runs on the CPU
    if rank() != 0:
        return 0
    from transformers import AutoModelForCausalLM

    stage("verify", "transformers reference: loading and forward (fp32)")
    reference = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(ids).logits.float()
        diff = (logits - expected).abs()
    ok = diff.max().item() <= atol and not mismatched
    why = nonfinite_logits(Megatron=logits, transformers=expected)
    say(
        f"verify: logits on a fixed {PROMPT_IDS}-token prompt (fp32): max |d| {diff.max().item():.3g}, "
        f"mean |d| {diff.mean().item():.3g} (atol {atol:g})"
    )
    if why:
        say(f"verify: {why}")
    say(f"verify: {'OK' if ok else 'MISMATCH'}")
    if not ok:
        print("bridgectl verify: error: the checkpoint does not match its source", file=sys.stderr)
    return 0 if ok else 1
