"""Byte sizes as users write them (``"5GB"``, ``"500MiB"``); no torch, so the launcher can check them."""

from __future__ import annotations

import re

from bridge_core.errors import ConfigError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(value: str | int) -> int:
    """``"5GB"`` -> 5e9 bytes (``GiB`` for powers of two), as transformers reads ``max_shard_size``."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"max shard size {value!r} is not a size like '5GB' or '500MiB'")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])
