"""``bridgectl export``: Megatron checkpoint (any TP/PP) -> complete HF folder."""

from __future__ import annotations

import argparse

from bridge_core.cli.common import (
    DTYPES,
    add_accept_config_arg,
    add_parallel_args,
    add_stream_args,
    parallelism,
    precheck_checkpoint,
    run_on_ranks,
)
from bridge_core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--megatron-path",
        required=True,
        help="checkpoint folder written by 'bridgectl import'",
    )
    parser.add_argument("--hf-path", required=True, help="HF folder to write")
    parser.add_argument(
        "--hf-model",
        default=None,
        help="reference HF folder or Hub ID org/name (default: the config that import stored)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 500MB, 2GB")
    parser.add_argument(
        "--torch-dtype", choices=DTYPES, default=None, help="dtype of the written tensors (default: the checkpoint's)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --hf-path")
    add_accept_config_arg(parser)
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow a reference model that needs remote code"
    )
    add_parallel_args(parser)
    add_stream_args(parser, "the model (as --tp/--pp/--ep above 1 do)")


def run(args: argparse.Namespace) -> int:
    from bridge_core.checkpoints.output_dir import check_output_dir, check_outside_inputs
    from bridge_core.sizes import parse_size
    from bridge_core.timing import begin_command

    timeline = begin_command()
    parallel = parallelism(args)
    parse_size(args.max_shard_size)
    precheck_checkpoint(args.megatron_path)
    check_outside_inputs(args.hf_path, "--hf-path", args.megatron_path, args.hf_model)
    check_output_dir(args.hf_path, args.overwrite, "--hf-path")
    reference = None
    if args.hf_model is not None:
        from bridge_core.checkpoints.hub import resolve_model_path

        reference = resolve_model_path(args.hf_model)
    live = args.via_model or parallel.world_size > 1  # the streaming export reads any layout in one process
    if not live and args.workers > 1:
        raise ConfigError("--workers: the streaming export runs in one process; leave --workers out")
    with timeline.handed_over():
        code = run_on_ranks(args, parallel.world_size if live else 1, reference)
    if code is not None:
        return code
    from bridge_core.progress import LOADING_LIBRARIES, stage

    stage("export", LOADING_LIBRARIES)
    if not live:
        from bridge_core.conversion.stream_export import stream_export

        stream_export(
            args.megatron_path,
            args.hf_path,
            reference,
            args.torch_dtype,
            args.max_shard_size,
            args.overwrite,
            accept_config=args.accept_config,
            trust_remote_code=args.trust_remote_code,
        )
        return 0
    from bridge_core.conversion.workflows import export_checkpoint

    export_checkpoint(
        args.megatron_path,
        args.hf_path,
        parallel,
        reference,
        args.torch_dtype,
        args.max_shard_size,
        args.overwrite,
        accept_config=args.accept_config,
        trust_remote_code=args.trust_remote_code,
    )
    return 0
