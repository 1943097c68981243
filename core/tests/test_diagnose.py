"""``bridge_core.authoring.diagnose``: the first module whose activations differ between transformers and Megatron."""

from __future__ import annotations

import _diagnose_bridges
import pytest
import torch

from bridge_core.authoring.diagnose import diagnose_model, fixed_input, stage_pairs
from bridge_core.conversion.workflows import build_from_hf
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.testing.toy import ToyModel, build_toy

CONFIG = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 3,
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


def diagnose(folder):
    from transformers import AutoModelForCausalLM

    bridge, _, model = build_from_hf(folder, Parallelism(), "float32")
    reference = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return diagnose_model(model, reference, fixed_input(300, 16), 300)


def test_stage_names_follow_the_forward_order():
    names = [(p.hf, p.megatron) for p in stage_pairs(2)]
    assert names[0] == ("model.embed_tokens", "embedding")
    assert names[1:5] == [
        ("model.layers.0.input_layernorm", "decoder.layers.0.input_layernorm"),
        ("model.layers.0.self_attn", "decoder.layers.0.self_attention"),
        ("model.layers.0.post_attention_layernorm", "decoder.layers.0.pre_mlp_layernorm"),
        ("model.layers.0.mlp", "decoder.layers.0.mlp"),
    ]
    assert names[-1] == ("model.norm", "decoder.final_layernorm")


def test_a_correct_bridge_shows_no_divergence(tmp_path):
    folder = build_toy(ToyModel("LlamaForCausalLM", {"model_type": "llama", **CONFIG}), tmp_path / "llama")
    report = diagnose(folder)
    assert report.first is None, report.format()
    observed = [r for r in report.results if r.max_diff is not None]
    assert len(observed) == len(report.results) == 1 + 3 * 4 + 1 + 1  # every stage seen on CPU's local spec
    assert "no divergence" in report.format()


def test_a_scaled_norm_is_named_with_its_magnitude(tmp_path):
    # no window: MistralConfig's default of 4096 would be refused by this stock-decoder test bridge
    mistral = {"model_type": "mistral", "sliding_window": None, **CONFIG}
    folder = build_toy(ToyModel("MistralForCausalLM", mistral), tmp_path / "mistral")
    report = diagnose(folder)
    assert report.first is not None
    assert report.first.pair.label == "layer 1 pre-MLP norm"
    assert (report.first.pair.hf, report.first.pair.megatron) == (
        "model.layers.1.post_attention_layernorm",
        "decoder.layers.1.pre_mlp_layernorm",
    )
    # Scaling the norm weight by 1.5 makes its output off by half the reference's magnitude.
    assert report.first.max_diff == pytest.approx(0.5 * report.first.ref_max, rel=1e-4)
    earlier = report.results[: report.results.index(report.first)]
    assert all(r.max_diff <= 1e-4 for r in earlier)
    verdict = report.format().splitlines()[-1]
    assert "first divergence at layer 1 pre-MLP norm" in verdict and "max |d|" in verdict
