"""Megatron-Bridge's AutoBridge names work as aliases over bridge-core's calls (in-process, TP=PP=1)."""

from __future__ import annotations

import _diagnose_bridges
import pytest
import torch

from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import compare_hf_weights, max_abs_diff
from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

CONFIG = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "vocab_size": 300,
    "max_position_embeddings": 128,
}


@pytest.fixture(autouse=True)
def plugin():
    registry = Registry()
    registry.add_plugin(_diagnose_bridges, name="diagnose-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = build_toy(ToyModel("LlamaForCausalLM", CONFIG), tmp_path_factory.mktemp("toy") / "hf")
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    return folder


def test_import_ckpt_then_export_ckpt_from_auto_config_is_bit_exact(toy, tmp_path):
    AutoBridge.import_ckpt(toy, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").is_file()
    bridge = AutoBridge.from_auto_config(tmp_path / "ckpt")  # the config the checkpoint stored
    assert bridge.hf.path is None and bridge.hf.architecture == "LlamaForCausalLM"
    bridge.export_ckpt(tmp_path / "ckpt", tmp_path / "out", show_progress=False)
    assert compare_hf_weights(toy, tmp_path / "out") == []


def test_to_save_and_load_megatron_model_keep_the_logits(toy, tmp_path):
    bridge = AutoBridge.from_hf_pretrained(toy)
    model = bridge.to_megatron_model()
    bridge.save_megatron_model(model, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer" / "tokenizer.json").is_file()
    loaded = bridge.load_megatron_model(tmp_path / "ckpt", mp_overrides={"tensor_model_parallel_size": 1})
    ids = sample_ids(300, batch=1, seq=16)
    diff = max_abs_diff(forward_logits(loaded, ids, vocab_size=300), hf_logits(toy, ids))
    assert diff <= 1e-4
    for a, b in zip(model[0].state_dict().values(), loaded[0].state_dict().values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_arguments_bridge_core_does_not_honour_are_refused_by_name(toy, tmp_path):
    with pytest.raises(ConfigError, match="low_memory_save"):
        AutoBridge.from_hf_pretrained(toy).save_megatron_model([], tmp_path / "x", low_memory_save=True)
    with pytest.raises(ConfigError, match="context_parallel_size"):
        AutoBridge.from_hf_pretrained(toy).load_megatron_model(tmp_path, mp_overrides={"context_parallel_size": 2})


def test_the_ignored_megatron_bridge_arguments_still_work_with_a_deprecation_warning(toy):
    with pytest.warns(DeprecationWarning, match=r"can_handle: trust_remote_code is ignored .* goes in bridge-core 2.0"):
        assert AutoBridge.can_handle(toy, trust_remote_code=True)
    bridge = AutoBridge.from_hf_pretrained(toy)
    model = bridge.to_megatron_model()
    expected = [(name, tensor.clone()) for name, tensor in bridge.export_hf_weights(model, True)]
    with pytest.warns(DeprecationWarning, match=r"export_hf_weights: show_progress is ignored \(pass progress="):
        got = list(bridge.export_hf_weights(model, True, False))  # Megatron-Bridge's third positional argument
    assert [n for n, _ in got] == [n for n, _ in expected]
    assert all(torch.equal(t, e) for (_, t), (_, e) in zip(got, expected))
