"""Toys for the SFT tests: a byte-level tokenizer with a ChatML template, and a Llama toy that uses it."""

from __future__ import annotations

import json
from pathlib import Path

from bridge_core.testing.toys import TINY_LLAMA

CHATML = (
    "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
)

TOY = {
    **TINY_LLAMA,
    "vocab_size": 384,  # 256 bytes + 3 special tokens, rounded up to a multiple of 128 (no Megatron padding)
}


def save_tokenizer(folder: Path, chat_template: str | None = CHATML) -> Path:
    """A byte-level BPE without merges (every byte one token), EOS ``<|im_end|>``, into ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
