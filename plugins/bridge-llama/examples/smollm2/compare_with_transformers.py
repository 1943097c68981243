"""transformers loads the exported folder, and its greedy output equals the original model's.

Usage: python compare_with_transformers.py ORIGINAL EXPORTED_HF_FOLDER [FILE_WITH_MEGATRON_OUTPUT]
ORIGINAL is the HF folder dequantized from the GGUF file (conversion.sh writes it), or the GGUF
file itself (then transformers dequantizes it again, which takes minutes on a CPU).
"""

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "The capital of France is"


def say(message: str) -> None:
    print(f"compare: {message}", flush=True)


def greedy(model, tokenizer) -> str:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=12)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def main() -> int:
    source, exported = Path(sys.argv[1]), Path(sys.argv[2])
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(exported)
    if source.suffix == ".gguf":
        say(f"loading the original from {source} (transformers dequantizes it: minutes on a CPU)")
        original = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    else:
        say(f"loading the original (dequantized GGUF) from {source}")
        original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    say("greedy generation with the original, 12 tokens")
    want = greedy(original.eval(), tokenizer)
    say(f"loading the exported folder {exported}")
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    say("greedy generation with the exported folder, 12 tokens")
    got = greedy(reloaded, tokenizer)
    say(f"done in {time.perf_counter() - start:.0f} s")
    print(f"transformers, original model:      {PROMPT}{want}")
    print(f"transformers, exported HF folder:  {PROMPT}{got}")
    if want != got:
        print("error: the exported model's greedy output differs from the original's", file=sys.stderr)
        return 1
    megatron = Path(sys.argv[3]).read_text().strip() if len(sys.argv) > 3 else None
    if megatron is not None and megatron != (PROMPT + want).strip():
        print(f"error: the Megatron model said {megatron!r}, transformers {PROMPT + want!r}", file=sys.stderr)
        return 1
    print("OK: identical greedy output" + (" (Megatron and transformers)" if megatron is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
