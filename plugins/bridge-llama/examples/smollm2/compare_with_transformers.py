"""transformers loads the exported folder, and its greedy output equals the original GGUF model's.

Usage: python compare_with_transformers.py GGUF_FILE EXPORTED_HF_FOLDER [FILE_WITH_MEGATRON_OUTPUT]
"""

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPT = "The capital of France is"


def greedy(model, tokenizer) -> str:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=12)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def main() -> int:
    gguf, exported = Path(sys.argv[1]), Path(sys.argv[2])
    tokenizer = AutoTokenizer.from_pretrained(exported)
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    want, got = greedy(original, tokenizer), greedy(reloaded, tokenizer)
    print(f"transformers, original GGUF model: {PROMPT}{want}")
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
