"""``peft.json``: what a PEFT training checkpoint's adapters are and which base model they adapt (torch-free)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bridge_core.errors import CheckpointError

PEFT_FILE = "peft.json"


def peft_document(peft: Any, hf_model: str | os.PathLike | None, megatron_path: str | os.PathLike | None) -> dict:
    """The adapter settings (a ``PeftConfig``) and the base's location, as ``peft.json`` stores them."""
    return {
        "scheme": peft.scheme,
        "rank": peft.rank,
        "alpha": peft.alpha,
        "dropout": peft.dropout,
        "targets": list(peft.targets),
        "initial_adapter": str(Path(peft.adapter).resolve()) if getattr(peft, "adapter", None) else None,
        "base": {
            "hf_model": str(Path(hf_model).resolve()) if hf_model is not None else None,
            "megatron_path": str(Path(megatron_path).resolve()) if megatron_path is not None else None,
        },
    }


def read_peft_document(folder: str | os.PathLike) -> dict | None:
    """``folder/peft.json``, or None when the folder is not a PEFT checkpoint."""
    file = Path(folder) / PEFT_FILE
    if not file.is_file():
        return None
    try:
        document = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: not readable JSON ({exc})") from exc
    missing = [k for k in ("scheme", "rank", "alpha", "targets", "base") if k not in document]
    if missing:
        raise CheckpointError(f"{file}: missing {', '.join(missing)}")
    return document
