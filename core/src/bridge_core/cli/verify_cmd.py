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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="the HF source (folder or GGUF file)")
    parser.add_argument("--megatron-path", required=True, help="checkpoint to verify")
    add_atol_arg(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that need remote code")
    add_accept_config_arg(parser)
    add_parallel_args(parser)


def add_atol_arg(parser: argparse.ArgumentParser) -> None:
    """``--atol``, verify's tolerance (``roundtrip`` verifies too)."""
    parser.add_argument("--atol", type=positive_float, default=1e-4, help="largest |logit difference| accepted (fp32)")


def run(args: argparse.Namespace) -> int:
    parallel = parallelism(args)
    precheck_checkpoint(args.megatron_path)
    with hf_source(args.hf_model, "verify") as folder:
        precheck_hf(folder, args.trust_remote_code)
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        return verify(folder, args.megatron_path, parallel, args.atol, args.accept_config)


def verify(folder, megatron_path: str, parallel, atol: float, accept_config=()) -> int:
    """Print ``conversion.verify``'s comparisons (bit-equality of every exported tensor, then fp32 logits
    against transformers) on rank 0. 0: all good."""
    from bridge_core.conversion.jobs import say
    from bridge_core.conversion.verify import PROMPT_IDS, compare_logits, compare_tensors, load_for_verify

    loaded = load_for_verify(megatron_path, parallel, folder, accept_config)
    tensors = compare_tensors(loaded)
    if tensors is not None:
        say(
            f"verify: tensors: {tensors.identical}/{tensors.source} bit-identical"
            + (f"; differing: {', '.join(tensors.differing[:5])}" if tensors.differing else "")
            + (f"; missing from checkpoint: {', '.join(tensors.missing[:5])}" if tensors.missing else "")
        )
    logits = compare_logits(loaded, folder, atol)
    if logits is None or tensors is None:
        return 0
    ok = logits.ok and tensors.ok
    say(
        f"verify: logits on a fixed {PROMPT_IDS}-token prompt (fp32): max |d| {logits.max_diff:.3g}, "
        f"mean |d| {logits.mean_diff:.3g} (atol {atol:g})"
    )
    if logits.nonfinite:
        say(f"verify: {logits.nonfinite}")
    say(f"verify: {'OK' if ok else 'MISMATCH'}")
    if not ok:
        print("bridgectl verify: error: the checkpoint does not match its source", file=sys.stderr)
    return 0 if ok else 1
