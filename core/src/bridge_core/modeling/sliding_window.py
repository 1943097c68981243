"""HF ``sliding_window`` (every layer) <-> megatron-core ``window_size``, for bridges of such families.

transformers (``masking_utils.sliding_window_overlay``) lets query ``i`` see key ``j`` when
``i - sliding_window < j <= i``: megatron-core's ``window_size = (sliding_window - 1, 0)``.
"""

from __future__ import annotations

from typing import Any

from bridge_core.errors import ConfigError


def sliding_window_kwargs(hf_config: Any, key: str = "sliding_window") -> dict[str, Any]:
    """Provider settings for a window on every layer (none when the config's value is null)."""
    value = getattr(hf_config, key, None)
    if value is None:
        return {"window_size": None}
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config.json: {key}={value!r} is not supported (a positive number of tokens, or null)")
    return {"window_size": (value - 1, 0), "window_attn_skip_freq": None}


def sliding_window_hf(provider: Any, key: str = "sliding_window") -> dict[str, Any]:
    """The inverse of ``sliding_window_kwargs``: ``{key: window_size[0] + 1}`` or ``{key: None}``."""
    window = provider.window_size
    if window is None:
        return {key: None}
    left, right = window
    if right != 0 or provider.window_attn_skip_freq is not None:
        raise ConfigError(
            f"window_size={tuple(window)} with window_attn_skip_freq={provider.window_attn_skip_freq!r} "
            f"cannot be written as config.json {key} (a causal window on every layer)"
        )
    return {key: int(left) + 1}
