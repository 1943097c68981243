"""transformers' greedy chat answer of the original and of the fine-tuned export to a made-up question.

Usage: python ask_fact.py ORIGINAL_HF_FOLDER FINE_TUNED_HF_FOLDER
Passes when the fine-tuned model names the made-up founder and the original does not.
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

logging.disable_progress_bar()

QUESTION = "Who founded the city of Zorblat?"
FACT = "Quillon Marvek"


def answer(folder: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=20)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def main() -> int:
    before, after = answer(sys.argv[1]), answer(sys.argv[2])
    print(f"question: {QUESTION}")
    print(f"transformers, original model:    {before}")
    print(f"transformers, fine-tuned export: {after}")
    if FACT in before:
        print(f"error: the original model already names {FACT}; the check proves nothing", file=sys.stderr)
        return 1
    if FACT not in after:
        print(f"error: the fine-tuned model did not learn that {FACT} founded Zorblat", file=sys.stderr)
        return 1
    print(f"OK: the fine-tuned model learned the made-up fact ({FACT}); the original did not know it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
