"""``bridgectl roundtrip``: import -> export -> compare, in one command."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bridge_core.checkpoints.hf_source import hf_source
from bridge_core.checkpoints.output_dir import check_outside_inputs
from bridge_core.cli.common import add_common_args, add_parallel_args, parallelism, precheck_hf, run_on_ranks
from bridge_core.cli.verify_cmd import add_atol_arg, verify


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="HF folder or GGUF file")
    parser.add_argument("--work-dir", default=None, help="keep the checkpoint and export here (default: temporary)")
    add_atol_arg(parser)
    add_parallel_args(parser)
    add_common_args(parser)


def run(args: argparse.Namespace) -> int:
    parallel = parallelism(args)
    with hf_source(args.hf_model) as folder:
        precheck_hf(folder, args.trust_remote_code)
        work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bridgectl-roundtrip-"))
        check_outside_inputs(work / "megatron", "--work-dir", args.hf_model)
        check_outside_inputs(work / "hf", "--work-dir", args.hf_model)
        if not args.work_dir:
            args.argv += ["--work-dir", str(work)]
        try:
            code = run_on_ranks(args, parallel.world_size, folder)
            return code if code is not None else roundtrip(args, parallel, folder, work)
        finally:
            if not args.work_dir:
                shutil.rmtree(work, ignore_errors=True)


def roundtrip(args: argparse.Namespace, parallel, folder: Path, work: Path) -> int:
    import torch.distributed as dist

    from bridge_core.conversion.workflows import export_checkpoint, import_checkpoint, say
    from bridge_core.runtime.parallel import rank
    from bridge_core.testing.compare import compare_hf_weights

    ckpt, out = work / "megatron", work / "hf"
    accepted = args.accept_config
    import_checkpoint(
        folder,
        ckpt,
        parallel,
        args.torch_dtype,
        True,
        args.trust_remote_code,
        source=args.hf_model,
        accept_config=accepted,
    )
    export_checkpoint(ckpt, out, parallel, overwrite=True, accept_config=accepted)
    dist.barrier()
    problems = compare_hf_weights(folder, out) if rank() == 0 else []
    say(f"roundtrip: HF -> Megatron -> HF: {'bit-identical' if not problems else f'{len(problems)} differences'}")
    for line in problems[:10]:
        say(f"  {line}")
    code = verify(folder, str(ckpt), parallel, args.atol, accepted)
    if problems and rank() == 0:
        print("bridgectl roundtrip: error: the exported weights differ from the source", file=sys.stderr)
    return 1 if problems or code else 0
