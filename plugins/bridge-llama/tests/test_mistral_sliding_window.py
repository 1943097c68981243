"""Mistral v0.1-style sliding-window attention: exact against transformers, and the window matters.

The conformance suite (``test_llama_conformance.py``, toy ``mistral-window``) covers the roundtrip,
TP=2 and PP=2; here: the window's convention (off by one is wrong), the ablation, and the export.
"""

from __future__ import annotations

import json

import pytest
import torch

from bridge_core import AutoBridge
from bridge_core.modeling.attention import SDPACoreAttention
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

WINDOW, SEQ = 8, 20
MISTRAL = {
    "model_type": "mistral",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "sliding_window": WINDOW,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_toy(ToyModel("MistralForCausalLM", MISTRAL), tmp_path_factory.mktemp("mistral"))


@pytest.fixture
def loaded(folder):
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.finalize()
    yield bridge, provider, provider.provide_distributed_model(wrap_with_ddp=False)
    destroy_model_parallel()


def eager_logits(folder, ids):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(ids).logits.float()


def cores(model) -> list[SDPACoreAttention]:
    return [layer.self_attention.core_attention for layer in model[0].decoder.layers]


def test_window_is_exact_and_matters(folder, loaded):
    _, provider, model = loaded
    assert provider.window_size == (WINDOW - 1, 0)
    assert all(isinstance(c, SDPACoreAttention) and c.window == (WINDOW - 1, 0) for c in cores(model))
    ids = sample_ids(1000, seq=SEQ)
    want = hf_logits(folder, ids)
    ours = forward_logits(model, ids, vocab_size=1000)
    assert max_abs_diff(ours, want) <= 1e-4
    assert max_abs_diff(ours, eager_logits(folder, ids)) <= 1e-4  # transformers' other attention path
    for window, what in ((None, "no window"), ((WINDOW, 0), "one key too many"), ((WINDOW - 2, 0), "one too few")):
        for core in cores(model):
            core.window = window
        diff = max_abs_diff(forward_logits(model, ids, vocab_size=1000), want)
        assert diff > 1e-3, f"{what}: {diff:.3g}"


def test_export_writes_the_window_back(folder, loaded, tmp_path):
    bridge, _, model = loaded
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["sliding_window"] == WINDOW


def test_null_window_keeps_the_stock_local_attention(tmp_path):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    folder = build_toy(ToyModel("MistralForCausalLM", {**MISTRAL, "sliding_window": None}), tmp_path / "m")
    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    assert provider.window_size is None
    exported = AutoBridge.from_hf_pretrained(folder).hf_config_for_export(provider)
    assert exported.sliding_window is None  # not MistralConfig's default of 4096
    provider.finalize()
    assert provider.layer_spec().submodules.self_attention.submodules.core_attention is DotProductAttention
