"""``bridgectl import``: HF folder (or GGUF file, or Hub ID) -> Megatron-LM ``torch_dist`` checkpoint."""

from __future__ import annotations

import argparse
import sys

from bridge_core.checkpoints.hf_source import hf_source
from bridge_core.cli.common import (
    add_common_args,
    add_parallel_args,
    add_stream_args,
    parallelism,
    precheck_hf,
    run_on_ranks,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hf-model",
        required=True,
        help="HF model folder, a .gguf file (or a folder with one), or a Hub ID org/name (downloaded)",
    )
    parser.add_argument("--megatron-path", required=True, help="checkpoint folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --megatron-path")
    parser.add_argument("--source-label", default=None, help=argparse.SUPPRESS)
    add_parallel_args(parser)
    add_stream_args(parser, "the model")
    add_common_args(parser)


def warn_without_tokenizer(folder, megatron_path: str) -> None:
    """A checkpoint without a tokenizer cannot ``generate`` on its own: say so (on stderr)."""
    from bridge_core.checkpoints.tokenizer_check import VOCABULARY_FILES, has_tokenizer
    from bridge_core.progress import is_rank0

    if is_rank0() and not has_tokenizer(folder):
        print(
            f"bridgectl import: warning: {folder} has no tokenizer ({', '.join(VOCABULARY_FILES)}); "
            f"'bridgectl generate --megatron-path {megatron_path}' will need --hf-model <folder with the tokenizer>",
            file=sys.stderr,
        )


def run(args: argparse.Namespace) -> int:
    from bridge_core.checkpoints.output_dir import check_output_dir, check_outside_inputs
    from bridge_core.timing import begin_command

    timeline_ = begin_command()
    parallel = parallelism(args)
    check_outside_inputs(args.megatron_path, "--megatron-path", args.hf_model)
    check_output_dir(args.megatron_path, args.overwrite, "--megatron-path")
    with hf_source(args.hf_model, "import") as folder:
        precheck_hf(folder, args.trust_remote_code)
        label = args.source_label or args.hf_model
        args.argv += ["--source-label", label] if args.source_label is None else []
        with timeline_.handed_over():
            code = run_on_ranks(args, parallel.world_size if args.via_model else args.workers, folder)
        if code is not None:
            return code
        from bridge_core.progress import LOADING_LIBRARIES, stage

        stage("import", LOADING_LIBRARIES)
        if args.via_model:
            from bridge_core.conversion.workflows import import_checkpoint
        else:
            from bridge_core.conversion.stream_import import stream_import as import_checkpoint

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
        warn_without_tokenizer(folder, args.megatron_path)  # after the work: stderr holds errors alone until then
    return 0
