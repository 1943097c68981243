"""Toy folders in transformers' fused expert layout (``save_pretrained(save_original_format=False)``)."""

from __future__ import annotations

from pathlib import Path

_FUSED: dict[Path, Path] = {}


def fused_copy(folder: Path, mktemp) -> Path:
    """``folder`` re-saved with stacked experts (``mlp.experts.gate_up_proj`` ...), once per session."""
    if folder not in _FUSED:
        from transformers import AutoModelForCausalLM

        out = mktemp("fused") / "hf"
        AutoModelForCausalLM.from_pretrained(folder, dtype="auto").save_pretrained(out, save_original_format=False)
        _FUSED[folder] = out
    return _FUSED[folder]
