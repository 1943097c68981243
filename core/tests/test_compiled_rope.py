"""attention.compiled_rope: megatron-core's RoPE replaced once by its torch.compile'd form, CUDA only."""

from __future__ import annotations

import pytest
import torch
from megatron.core.models.common.embeddings import rope_utils

from bridge_core.errors import ConfigError
from bridge_core.modeling.compiled_rope import compile_rope
from bridge_core.training.config import TrainingConfig, set_value


def test_the_override_is_typed():
    config = TrainingConfig()
    set_value(config, "attention.compiled_rope", True)
    assert config.attention.compiled_rope is True
    with pytest.raises(ConfigError, match="attention.compiled_rope"):
        set_value(config, "attention.compiled_rope", "sometimes")


def test_without_cuda_it_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^attention.compiled_rope=true needs CUDA") as err:
        compile_rope()
    assert "\n" not in str(err.value)


def test_megatron_rope_is_compiled_once_and_keeps_its_math(monkeypatch):
    original = rope_utils._apply_rotary_pos_emb_bshd
    monkeypatch.setattr(rope_utils, "_apply_rotary_pos_emb_bshd", original)  # restored after the test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    compiled = []

    def fake_compile(fn, dynamic=None):
        compiled.append((fn, dynamic))

        def wrapper(*args, **kwargs):
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "compile", fake_compile)
    compile_rope()
    compile_rope()  # idempotent: not compiled twice
    assert compiled == [(original, False)]
    patched = rope_utils._apply_rotary_pos_emb_bshd
    assert patched is not original
    t, freqs = torch.randn(5, 1, 2, 8), torch.randn(5, 1, 1, 8)
    assert torch.equal(patched(t, freqs), original(t, freqs))
