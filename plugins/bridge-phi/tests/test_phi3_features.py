"""Phi-3's features each matter (turning one off breaks parity with transformers), fused tensors re-fuse
exactly, greedy generation equals transformers', and what cannot be reproduced is refused."""

from __future__ import annotations

import json

import pytest
import torch

from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

PHI3 = {
    "model_type": "phi3",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "original_max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 998,  # Phi3Config's defaults (32000) lie outside the toy vocabulary
    "pad_token_id": 999,
    "partial_rotary_factor": 0.5,
    "sliding_window": 8,
}
SEQ = 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_toy(ToyModel("Phi3ForCausalLM", PHI3), tmp_path_factory.mktemp("phi3"))


def build(folder, **overrides):
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in overrides.items():
        setattr(provider, key, value)
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    return bridge, provider, model


@pytest.fixture
def cleanup():
    yield
    destroy_model_parallel()


def max_diff(model, folder) -> float:
    ids = sample_ids(1000, seq=SEQ)
    return max_abs_diff(forward_logits(model, ids, vocab_size=1000), hf_logits(folder, ids))


def test_translation(folder):
    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    assert (provider.rotary_percent, provider.window_size, provider.kv_channels) == (0.5, (7, 0), 16)


@pytest.mark.parametrize("ablation", [None, {"rotary_percent": 1.0}, {"window_size": None}])
def test_each_feature_matters(folder, cleanup, ablation):
    _, _, model = build(folder, **(ablation or {}))
    diff = max_diff(model, folder)
    if ablation is None:
        assert diff <= 1e-4
    else:
        assert diff > 1e-2, f"{ablation}: {diff:.3g}"


def test_fused_tensors_split_into_megatron_and_fuse_back_exactly(folder, cleanup, tmp_path):
    from safetensors.torch import load_file

    from bridge_core.testing.compare import compare_hf_weights

    bridge, provider, model = build(folder)
    model[0].cpu()  # compared with the file's tensors (a GPU, when visible, holds the model)
    hf = load_file(folder / "model.safetensors")
    layer = model[0].decoder.layers[0]
    qkv, d = hf["model.layers.0.self_attn.qkv_proj.weight"], 16
    q, k, v = qkv[: 4 * d], qkv[4 * d : 6 * d], qkv[6 * d :]
    group0 = torch.cat([q[: 2 * d], k[:d], v[:d]])  # KV group 0: query heads 0-1, then its key and value head
    assert torch.equal(layer.self_attention.linear_qkv.weight[: 4 * d], group0)
    assert torch.equal(layer.mlp.linear_fc1.weight, hf["model.layers.0.mlp.gate_up_proj.weight"])
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(folder, tmp_path / "out") == []  # every tensor, bit for bit
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["sliding_window"] == 8 and config["rope_parameters"]["partial_rotary_factor"] == 0.5


def test_greedy_generation_equals_transformers(folder, cleanup):
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=20)  # 32 tokens: 4x the window
    assert expected.shape[1] == 32
    _, _, model = build(folder)
    eos = hf.generation_config.eos_token_id
    assert torch.equal(greedy_generate(model, ids, 20, eos_token_id=eos), expected)
    assert torch.equal(greedy_generate(model, ids, 20, eos_token_id=eos, use_cache=False), expected)


LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"rope_scaling": LONGROPE, "original_max_position_embeddings": 256}, "rope_scaling.type=longrope"),
        ({"sliding_window": 0}, "sliding_window=0 is not supported"),
        ({"resid_pdrop": 0.1}, "resid_pdrop=0.1"),
    ],
)
def test_unsupported_settings_are_refused(tmp_path, changes, fragment):
    folder = build_toy(ToyModel("Phi3ForCausalLM", {**PHI3, **changes}), tmp_path / "toy")
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    assert fragment in str(err.value) and "\n" not in str(err.value)
