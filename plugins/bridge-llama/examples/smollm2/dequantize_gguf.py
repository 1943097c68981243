"""Dequantize a GGUF file once into an HF folder (safetensors, config, tokenizer) that later steps reuse.

Usage: python dequantize_gguf.py GGUF_FILE OUT_FOLDER
"""

import sys
import time

from bridge_core.checkpoints.gguf_source import gguf_to_hf_folder


def main() -> int:
    gguf, out = sys.argv[1], sys.argv[2]
    print(f"dequantizing {gguf} with transformers into {out} (the slow part of reading a GGUF) ...", flush=True)
    start = time.perf_counter()
    gguf_to_hf_folder(gguf, out, overwrite=True)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
