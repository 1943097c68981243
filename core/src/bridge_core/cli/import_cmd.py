"""``bridgectl import``: HF folder (or GGUF file) -> Megatron-LM ``torch_dist`` checkpoint."""

from __future__ import annotations

import argparse

from bridge_core.cli.common import add_common_args, add_parallel_args, hf_source, parallelism, precheck_hf, run_on_ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", required=True, help="HF model folder, or a .gguf file (or a folder with one)")
    parser.add_argument("--megatron-path", required=True, help="checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --megatron-path")
    parser.add_argument("--source-label", default=None, help=argparse.SUPPRESS)
    add_parallel_args(parser)
    add_common_args(parser)


def run(args: argparse.Namespace) -> int:
    from bridge_core.output_dir import check_output_dir, check_outside_inputs

    parallel = parallelism(args)
    check_outside_inputs(args.megatron_path, "--megatron-path", args.hf_model)
    check_output_dir(args.megatron_path, args.overwrite, "--megatron-path")
    with hf_source(args.hf_model) as folder:
        precheck_hf(folder, args.trust_remote_code)
        label = args.source_label or args.hf_model
        args.argv += ["--source-label", label] if args.source_label is None else []
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        from bridge_core.workflows import import_checkpoint

        import_checkpoint(
            folder,
            args.megatron_path,
            parallel,
            args.torch_dtype,
            args.overwrite,
            args.trust_remote_code,
            source=label,
            accept_config=args.accept_config,
        )
    return 0
