"""``bridgectl data prepare``: a JSONL file -> megatron-core indexed datasets (pretrain) or an SFT set."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    prep = sub.add_parser("prepare", help="tokenize a JSONL file for 'bridgectl train'")
    prep.add_argument("--tokenizer", required=True, help="HF folder with the tokenizer files (and chat template)")
    prep.add_argument(
        "--input", required=True, help='JSONL file: {"text"} (pretrain); {"messages"} or {"prompt", "completion"} (sft)'
    )
    prep.add_argument("--output", required=True, help="path prefix of the files written (e.g. data/train)")
    prep.add_argument(
        "--format", choices=("pretrain", "sft"), default="pretrain", help="what the data is for (default: pretrain)"
    )
    prep.add_argument("--overwrite", action="store_true", help="replace existing output files")
    # also accepted after 'prepare' (SUPPRESS: the top-level values stand when not given here)
    prep.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress bar")
    prep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks of errors")


def run(args: argparse.Namespace) -> int:
    from bridge_core.progress import LOADING_LIBRARIES, stage

    stage("data prepare", LOADING_LIBRARIES)
    from bridge_core.training.data_prepare import prepare

    done = prepare(args.tokenizer, args.input, args.output, args.format, overwrite=args.overwrite)
    answer = f" ({done.answer_tokens:,} answer tokens)" if done.answer_tokens is not None else ""
    kind = "data.kind=sft data.sft_prefix" if args.format == "sft" else "data.kind=pretrain data.paths"
    use = f"{kind}={args.output}"
    print(
        f"data prepare: {done.examples:,} examples, {done.tokens:,} tokens{answer} from {args.input} -> "
        f"{', '.join(p.name for p in done.files)} in {done.seconds:.1f} s; train with {use}"
    )
    return 0
