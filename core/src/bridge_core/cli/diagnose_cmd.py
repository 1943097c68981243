"""``bridgectl diagnose``: run HF and Megatron side by side and name the first module that differs."""

from __future__ import annotations

import argparse

from bridge_core.checkpoints.hf_source import hf_source
from bridge_core.cli.common import (
    add_parallel_args,
    parallelism,
    precheck_hf,
    run_on_ranks,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="HF folder, GGUF file or Hub ID org/name")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="largest |activation difference| accepted, times max(1, |reference|)"
    )
    parser.add_argument("--seq-length", type=int, default=32, help="tokens of the fixed input")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow models that need remote code")
    add_parallel_args(parser)


def run(args: argparse.Namespace) -> int:
    from bridge_core.errors import ConfigError
    from bridge_core.timing import begin_command

    begin_command()
    parallel = parallelism(args)
    if not args.atol >= 0 or args.atol == float("inf"):
        raise ConfigError(f"--atol must be a finite number >= 0, got {args.atol}")
    if args.seq_length < 1:
        raise ConfigError(f"--seq-length must be at least 1, got {args.seq_length}")
    if parallel.pp != 1:
        raise ConfigError("diagnose compares one pipeline stage: use --pp 1 (--tp is fine)")
    with hf_source(args.hf_model, "diagnose") as folder:
        precheck_hf(folder, args.trust_remote_code)
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        from bridge_core.progress import LOADING_LIBRARIES, stage

        stage("diagnose", LOADING_LIBRARIES)
        return diagnose(folder, parallel, args.atol, args.seq_length, args.trust_remote_code)


def diagnose(folder, parallel, atol: float, seq_length: int, trust_remote_code: bool = False) -> int:
    """0: no divergence; 1: a stage diverges (named on stdout)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bridge_core.authoring.diagnose import diagnose_model, fixed_input
    from bridge_core.conversion.workflows import build_from_hf, say
    from bridge_core.progress import Progress, stage
    from bridge_core.runtime.parallel import rank

    progress = Progress("diagnose", enabled=rank() == 0, unit="Megatron parameters", stage="reading weights")
    bridge, _, model = build_from_hf(folder, parallel, "float32", trust_remote_code, progress)
    progress.finish()
    vocab = bridge.hf_config.vocab_size
    ids = fixed_input(vocab, seq_length)
    stage("diagnose", "loading the transformers reference (fp32)")
    reference = None
    if rank() == 0:
        reference = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32, trust_remote_code=trust_remote_code
        ).eval()
    stage("diagnose", f"running both forwards on a fixed {ids.shape[1]}-token input")
    report = diagnose_model(model, reference, ids, vocab, atol)
    if report is None:
        return 0
    say(f"diagnose: fp32 activations, HF <-> Megatron, stage by stage (tolerance {atol:g} x max(1, max |ref|))")
    say(report.format())
    return 0 if report.first is None else 1
