"""``bridgectl generate``: greedy generation with the Megatron model (KV cache)."""

from __future__ import annotations

import argparse
import sys

from bridge_core.cli.common import add_common_args, add_parallel_args, hf_source, parallelism, precheck_hf, run_on_ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-model", default=None, help="HF folder or GGUF file (weights, unless --megatron-path)")
    parser.add_argument("--megatron-path", default=None, help="take the weights from this Megatron checkpoint")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=32)
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


def run(args: argparse.Namespace) -> int:
    from bridge_core.errors import CheckpointError

    parallel = parallelism(args)
    if args.hf_model is None and args.megatron_path is None:
        raise CheckpointError("give --hf-model, --megatron-path, or both")
    with hf_source(args.hf_model) as folder:
        if folder is not None:
            precheck_hf(folder, args.trust_remote_code)
        code = run_on_ranks(args, parallel.world_size, folder)
        if code is not None:
            return code
        return generate(args, parallel, folder)


def generate(args: argparse.Namespace, parallel, folder) -> int:
    from transformers import AutoTokenizer

    from bridge_core.generation import timed_greedy_generate
    from bridge_core.workflows import build_from_hf, load_checkpoint, rank

    if args.megatron_path is not None:
        loaded = load_checkpoint(
            args.megatron_path, parallel, folder, args.torch_dtype, args.trust_remote_code, args.accept_config
        )
        bridge, model = loaded.bridge, loaded.model
        tokenizer_dir = folder or loaded.info.tokenizer_dir
    else:
        bridge, _, model = build_from_hf(
            folder, parallel, args.torch_dtype, args.trust_remote_code, accept_config=args.accept_config
        )
        tokenizer_dir = folder
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
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
