"""``bridgectl peft export`` / ``peft merge``: a PEFT training checkpoint -> an HF PEFT adapter or a merged HF model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    export = sub.add_parser("export", help="write an HF PEFT folder (adapter_config.json + adapter_model.safetensors)")
    merge = sub.add_parser("merge", help="write a full HF model folder: the base with the adapters merged")
    for p in (export, merge):
        p.add_argument("--megatron-path", required=True, help="checkpoint folder of a PEFT 'bridgectl train' run")
        p.add_argument("--hf-path", required=True, help="folder to write")
        p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --hf-path")
        p.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress lines")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")
    merge.add_argument("--base", default=None, help="the base model's HF folder (default: the one the run trained)")
    merge.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 500MB, 2GB")


def run(args: argparse.Namespace) -> int:
    from bridge_core.checkpoints.output_dir import check_output_dir, check_outside_inputs
    from bridge_core.progress import LOADING_LIBRARIES, stage

    check_outside_inputs(args.hf_path, "--hf-path", args.megatron_path, getattr(args, "base", None))
    check_output_dir(args.hf_path, args.overwrite, "--hf-path")
    stage(f"peft {args.action}", LOADING_LIBRARIES)
    from bridge_core.peft import workflows
    from bridge_core.runtime.cpu_support import cuda_on_cpu

    with cuda_on_cpu():
        if args.action == "export":
            out = workflows.export_adapter(args.megatron_path, args.hf_path, overwrite=args.overwrite)
            print(f"peft export: wrote the adapter of {args.megatron_path} to {out}")
        else:
            from bridge_core.sizes import parse_size

            parse_size(args.max_shard_size)
            out = workflows.merge_adapter(
                args.megatron_path, args.hf_path, args.base, args.overwrite, args.max_shard_size
            )
            print(f"peft merge: wrote the merged model of {args.megatron_path} to {out}")
    return 0
