"""The optional bridge hook ``select_hf_layout``: called before ``mapping_registry()`` with the model's
provider, and the source's tensor names on import (None on export), so a bridge can pick between HF
layouts of one architecture and export what the source had."""

from __future__ import annotations

from pathlib import Path

import _test_bridges
import pytest

from bridge_core import AutoBridge
from bridge_core.model.decoder import DecoderBridge
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel, build_toy

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "intermediate_size": 96,
    "vocab_size": 300,
    "max_position_embeddings": 128,
}


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


def test_hook_sees_the_provider_and_the_source_names_on_import_only(tmp_path, monkeypatch):
    calls: list[tuple[object, frozenset | None]] = []
    monkeypatch.setattr(DecoderBridge, "select_hf_layout", lambda self, config, names: calls.append((config, names)))
    folder: Path = build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path / "hf")
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    (config, names), *_ = calls
    assert config is provider
    assert names == frozenset(bridge.hf.weights.meta) and "model.embed_tokens.weight" in names
    calls.clear()
    list(bridge.export_hf_weights(model))
    assert [(c is provider, n) for c, n in calls] == [(True, None)]
