"""``bridgectl generate``: greedy generation with the Megatron model (KV cache)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge_core.checkpoints.hf_source import hf_source
from bridge_core.cli.common import (
    add_common_args,
    add_parallel_args,
    parallelism,
    precheck_checkpoint,
    precheck_hf,
    run_on_ranks,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hf-model",
        "--hf_model_path",
        default=None,
        help="HF folder, GGUF file or Hub ID org/name: the weights (unless --megatron-path) and the tokenizer",
    )
    parser.add_argument(
        "--megatron-path", "--megatron_model_path", default=None, help="take the weights from this Megatron checkpoint"
    )
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--no-cache", action="store_true", help="recompute the sequence at every step (no KV cache)")
    add_parallel_args(parser)
    add_common_args(parser)


def encode(tokenizer, prompt: str, chat: bool):
    import torch

    if chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return torch.tensor([list(ids)])
    return tokenizer(prompt, return_tensors="pt").input_ids


def check_tokenizer(folder: Path | None, megatron_path: str | None) -> None:
    """Refuse (before any model is built) when no tokenizer comes with --hf-model or the checkpoint."""
    from bridge_core.checkpoints.checkpoint_format import TOKENIZER_DIR
    from bridge_core.checkpoints.tokenizer_check import VOCABULARY_FILES, has_tokenizer
    from bridge_core.errors import CheckpointError

    if folder is not None:
        where = Path(folder)
    else:
        assert megatron_path is not None, "run() refuses neither --hf-model nor --megatron-path"
        where = Path(megatron_path) / TOKENIZER_DIR
    if not has_tokenizer(where):
        raise CheckpointError(
            f"{where}: no tokenizer ({', '.join(VOCABULARY_FILES)}); give one with --hf-model <HF folder "
            "with the tokenizer files>"
            + (" (the weights still come from --megatron-path)" if megatron_path is not None else "")
        )


def run(args: argparse.Namespace) -> int:
    from bridge_core.errors import CheckpointError
    from bridge_core.progress import set_stream
    from bridge_core.timing import begin_command

    begin_command()
    set_stream(sys.stderr)  # stdout is the generated text
    parallel = parallelism(args)
    if args.hf_model is None and args.megatron_path is None:
        raise CheckpointError("give --hf-model, --megatron-path, or both")
    if args.megatron_path is not None:
        precheck_checkpoint(args.megatron_path)
    with hf_source(args.hf_model, "generate") as folder:
        if folder is not None:
            precheck_hf(folder, args.trust_remote_code)
        check_tokenizer(folder, args.megatron_path)
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        from bridge_core.progress import LOADING_LIBRARIES, stage

        stage("generate", LOADING_LIBRARIES)
        return generate(args, parallel, folder)


def generate(args: argparse.Namespace, parallel, folder) -> int:
    from transformers import AutoTokenizer

    from bridge_core.conversion.workflows import build_from_hf, load_checkpoint
    from bridge_core.progress import Progress, stage
    from bridge_core.runtime.generation import timed_greedy_generate
    from bridge_core.runtime.parallel import rank

    if args.megatron_path is not None:
        stage("generate", f"loading {args.megatron_path}")
        loaded = load_checkpoint(
            args.megatron_path, parallel, folder, args.torch_dtype, args.trust_remote_code, args.accept_config
        )
        bridge, model = loaded.bridge, loaded.model
        tokenizer_dir = folder or loaded.info.tokenizer_dir
    else:
        progress = Progress("generate", enabled=rank() == 0, unit="Megatron parameters", stage="reading weights")
        bridge, _, model = build_from_hf(
            folder, parallel, args.torch_dtype, args.trust_remote_code, progress, accept_config=args.accept_config
        )
        progress.finish()
        tokenizer_dir = folder
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    stage("generate", f"generating up to {args.max_new_tokens} tokens")
    ids = encode(tokenizer, args.prompt, args.chat)
    eos = getattr(bridge.hf_config, "eos_token_id", None) if args.chat else None
    result = timed_greedy_generate(
        model,
        ids,
        args.max_new_tokens,
        eos_token_id=eos,
        vocab_size=bridge.hf_config.vocab_size,
        use_cache=not args.no_cache,
    )
    if rank() == 0:
        text = tokenizer.decode(result.tokens[0, result.prompt_length :], skip_special_tokens=True)
        print(text if args.chat else args.prompt + text, flush=True)
        print(
            f"generate: {result.new_tokens} tokens in {result.seconds:.2f} s ({result.tokens_per_second:.1f} "
            f"tokens/s, {result.decode_tokens_per_second:.1f} after the first)",
            file=sys.stderr,
        )
    return 0
