"""``--hf-model`` as a Hugging Face Hub ID: ``org/name`` that is no local path is downloaded first.

Downloads go through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HOME``), limited to the
files a conversion reads: config, safetensors weights, tokenizer and generation files (no ``.bin``,
no ``.gguf``: download a GGUF file yourself and pass its path). Torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bridge_core.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def looks_like_hub_id(value: str) -> bool:
    """``org/name`` with the Hub's characters (no leading ``.``/``/``, exactly one ``/``)."""
    return bool(HUB_ID.match(value)) and not value.endswith((".gguf", ".safetensors", ".json"))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def resolve_model_path(value: str, flag: str = "--hf-model", action: str = "bridgectl") -> Path:
    """A local path for ``value``: the path itself when it exists, else the Hub snapshot of ``org/name``.

    Raises ``CheckpointError`` (one line) for a missing path that is no Hub ID, and for a Hub ID that
    cannot be downloaded (offline, unknown, gated), saying how to download it first.
    """
    path = Path(value).expanduser()
    if path.exists() or not looks_like_hub_id(value):
        if not path.exists():
            raise CheckpointError(f"{path}: no such file or folder")
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers requires huggingface_hub
        raise CheckpointError(f"{flag} {value}: no such local path, and huggingface_hub is not installed") from None
    if not _offline():
        from bridge_core.progress import stage

        stage(action, f"fetching {value} from the Hugging Face Hub")
    how = f"download it first (huggingface-cli download {value} --local-dir DIR) and pass {flag} DIR"
    try:
        return Path(snapshot_download(value, allow_patterns=ALLOW_PATTERNS))
    except Exception as exc:
        offline = _offline()
        first = " ".join(str(exc).split()).split(". ")[0][:200]
        why = "HF_HUB_OFFLINE is set" if offline else f"{type(exc).__name__}: {first}"
        raise CheckpointError(
            f"{flag} {value}: no such local path, and the Hub could not provide it ({why}); {how}"
        ) from None
