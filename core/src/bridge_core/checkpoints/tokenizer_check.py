"""Whether a folder holds a tokenizer that ``AutoTokenizer`` can load without extra packages. Torch-free."""

from __future__ import annotations

from pathlib import Path

# One of these is a tokenizer's vocabulary; tokenizer_config.json or generation_config.json alone is not.
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_tokenizer(folder: str | Path | None) -> bool:
    """True when ``folder`` holds one of ``VOCABULARY_FILES`` (regular files)."""
    if folder is None:
        return False
    folder = Path(folder)
    return folder.is_dir() and any((folder / name).is_file() for name in VOCABULARY_FILES)
