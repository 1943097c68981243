"""What transformers' own implementation of an architecture reads from its config (by source, no import).

The bridge reproduces transformers' model; a config key that transformers' modeling code for the
architecture never names cannot change what that model computes (``is_llama_config``,
``rope_interleaved`` in SmolLM2's config, ``use_mrope`` in Qwen2.5's). The scan reads the source of
the architecture's ``modeling_*``/``configuration_*`` modules and the transformers modules they import
from (RoPE and mask helpers, ``modeling_utils``...), without executing them.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

_IMPORT = re.compile(r"^\s*from\s+(\.+[\w.]*|transformers[\w.]*)\s+import", re.M)
_WORD = re.compile(r"[A-Za-z_]\w*")


def _source(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        return Path(spec.origin).read_text(encoding="utf-8")
    except OSError:
        return None


def _absolute(package: str, name: str) -> str:
    if not name.startswith("."):
        return name
    dots = len(name) - len(name.lstrip("."))
    base = package.split(".")[: len(package.split(".")) - dots + 1]
    rest = name[dots:]
    return ".".join(base + ([rest] if rest else []))


@functools.lru_cache(maxsize=32)
def _words_of(config_module: str) -> frozenset[str] | None:
    parts = config_module.split(".")
    if len(parts) != 4 or parts[:2] != ["transformers", "models"] or not parts[3].startswith("configuration_"):
        return None  # remote code or a custom class: what its model reads is unknown
    package = ".".join(parts[:3])
    modeling = f"{package}.modeling_{parts[3].removeprefix('configuration_')}"
    words: set[str] = set()
    seen: set[str] = set()
    for module in (modeling, config_module):
        text = _source(module)
        if text is None:
            return None
        words.update(_WORD.findall(text))
        for name in _IMPORT.findall(text):
            shared = _absolute(package, name)
            if shared not in seen and shared != module:
                seen.add(shared)
                words.update(_WORD.findall(_source(shared) or ""))
    return frozenset(words)


def read_by_reference(hf_config: Any, key: str) -> bool:
    """False only when transformers' implementation of this config's architecture never names ``key``.

    True when it may read it, or when that cannot be told (remote code, custom config classes).
    """
    words = _words_of(type(hf_config).__module__)
    return words is None or key in words
