"""The files of a prepared SFT set (torch-free): what ``bridgectl data prepare --format sft`` writes.

``PREFIX_tokens.bin/.idx``  megatron-core indexed dataset: one sequence of token ids per example
``PREFIX_mask.bin/.idx``    the same lengths, uint8: 1 where the token is part of an answer (a label)
``PREFIX.json``             what was prepared (tokenizer, counts, EOS id); written last, so a set
                            without it is incomplete
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge_core.errors import DataError

FORMAT = "bridge-sft-1"


def tokens_prefix(prefix: str | Path) -> str:
    return f"{prefix}_tokens"


def mask_prefix(prefix: str | Path) -> str:
    return f"{prefix}_mask"


def manifest_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.json")


def sft_files(prefix: str | Path) -> list[Path]:
    """Every file of the set, the manifest last (the order they are moved into place)."""
    data = [Path(p + suffix) for p in (tokens_prefix(prefix), mask_prefix(prefix)) for suffix in (".bin", ".idx")]
    return [*data, manifest_path(prefix)]


def read_manifest(prefix: str | Path, setting: str = "data.sft_prefix") -> dict[str, Any]:
    """The manifest of a complete set, or a one-line error naming the first missing file."""
    for path in sft_files(prefix):
        if not path.is_file():
            raise DataError(
                f"{setting}: {path} does not exist (prepare the set with "
                f"'bridgectl data prepare --format sft --output {prefix}')"
            )
    path = manifest_path(prefix)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{setting}: {path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{setting}: {path} is not a prepared SFT set (format {FORMAT!r} expected)")
    return manifest
