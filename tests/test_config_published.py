"""Published config.json files of popular models through the installed bridges (issue 12).

Keys that name, tokenize or run the model pass; keys at an "off" default pass; keys transformers'
own implementation ignores pass; a key that changes the computation and that the bridge does not
reproduce is refused, naming it and the override (``accept_config`` / ``--accept-config``).
"""

from __future__ import annotations

import json

import pytest
from _published_configs import MISTRAL_7B_V0_1, QWEN2_5_0_5B, SMOLLM2_360M, SMOLLM2_FROM_GGUF

from bridge_core import AutoBridge
from bridge_core.errors import ConfigError


@pytest.fixture(autouse=True)
def _plugins(monkeypatch):
    from bridge_core.plugins.discovery import reset_registry

    monkeypatch.setenv("BRIDGE_PLUGINS", "llama,qwen")
    reset_registry()
    yield
    reset_registry()


def folder_with(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def provider_of(tmp_path, config: dict, **kwargs):
    return AutoBridge.from_hf_pretrained(folder_with(tmp_path, config), **kwargs).to_megatron_provider()


@pytest.mark.parametrize(
    "config", [SMOLLM2_360M, QWEN2_5_0_5B, SMOLLM2_FROM_GGUF], ids=["smollm2-360m", "qwen2.5-0.5b", "smollm2-gguf"]
)
def test_published_config_is_accepted(tmp_path, config):
    provider = provider_of(tmp_path, config)
    assert provider.num_layers == config["num_hidden_layers"]
    assert provider.hidden_size == config["hidden_size"]
    assert provider.rotary_base == float(config["rope_theta"])


def test_mistral_v0_1_sliding_window_converts_exactly(tmp_path):
    # bridge-llama reproduces the window (SDPA core attention): every layer attends to 4096 keys
    provider = provider_of(tmp_path, MISTRAL_7B_V0_1)
    assert provider.window_size == (4095, 0)


# Qwen2.5 with its sliding window switched on (the bridge reproduces no window for Qwen2)
QWEN2_5_WINDOWED = {**QWEN2_5_0_5B, "use_sliding_window": True}


def test_a_setting_the_bridge_does_not_reproduce_is_refused_naming_the_override(tmp_path):
    with pytest.raises(ConfigError) as err:
        provider_of(tmp_path, QWEN2_5_WINDOWED)
    message = str(err.value)
    assert "\n" not in message
    assert f"sliding_window={QWEN2_5_0_5B['sliding_window']}" in message
    assert "use_sliding_window=True" in message and "--accept-config sliding_window" in message
    assert "accept_config=['max_window_layers', 'sliding_window', 'use_sliding_window']" in message


def test_accept_config_lets_a_refused_key_through(tmp_path):
    accepted = ["sliding_window", "max_window_layers", "use_sliding_window"]
    provider = provider_of(tmp_path, QWEN2_5_WINDOWED, accept_config=accepted)
    assert provider.num_layers == QWEN2_5_0_5B["num_hidden_layers"]


def test_a_key_transformers_may_read_is_still_refused(tmp_path):
    # Not a LlamaConfig field, but transformers' mask code reads it (Llama 4's chunked attention).
    with pytest.raises(ConfigError, match=r"attention_chunk_size=128 \(not understood\).*--accept-config"):
        provider_of(tmp_path, {**SMOLLM2_360M, "attention_chunk_size": 128})


def test_rope_parameters_megatron_core_would_ignore_are_refused(tmp_path):
    # transformers 5 moves partial_rotary_factor into rope_parameters; the default RoPE must not drop it.
    with pytest.raises(ConfigError, match=r"rope 'default' with partial_rotary_factor=0.5 is not supported"):
        provider_of(tmp_path, {**SMOLLM2_360M, "partial_rotary_factor": 0.5})
