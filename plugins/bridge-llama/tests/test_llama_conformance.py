"""bridge-llama against the core's conformance suite, plus Llama-specific refusals."""

from __future__ import annotations

import pytest

from bridge_core.testing.conformance import BridgeConformance, ToyModel

BASE = {
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


class TestLlamaConformance(BridgeConformance):
    plugin = "llama"
    seq_len = 160  # long enough that wrong llama3 scaling shows (it moves logits by ~1e-1 at 200 tokens)
    toys = {
        "llama-gqa3": ToyModel("LlamaForCausalLM", {"model_type": "llama", **BASE, "num_key_value_heads": 3}),
        "llama-untied": ToyModel("LlamaForCausalLM", {"model_type": "llama", **BASE}),
        "llama-tied-odd-vocab": ToyModel(
            "LlamaForCausalLM", {"model_type": "llama", **BASE, "tie_word_embeddings": True, "vocab_size": 999}
        ),
        "llama3-rope": ToyModel(
            "LlamaForCausalLM",
            {
                "model_type": "llama",
                **BASE,
                "max_position_embeddings": 16384,
                "rope_theta": 500000.0,
                "rope_scaling": LLAMA3_ROPE,
            },
        ),
        "llama-bf16": ToyModel("LlamaForCausalLM", {"model_type": "llama", **BASE}, dtype="bfloat16"),
        "mistral": ToyModel("MistralForCausalLM", {"model_type": "mistral", **BASE, "sliding_window": None}),
        "mistral-window": ToyModel("MistralForCausalLM", {"model_type": "mistral", **BASE, "sliding_window": 8}),
    }


@pytest.fixture
def folder_with(toy_model_factory):
    def make(arch, config):
        return toy_model_factory(ToyModel(arch, config))

    return make


@pytest.mark.parametrize(
    "arch,extra,fragment",
    [
        (
            "LlamaForCausalLM",
            {
                "model_type": "llama",
                "rope_scaling": {**LLAMA3_ROPE, "low_freq_factor": 2.0},
                "max_position_embeddings": 16384,
            },
            "llama3 rope scaling with {'low_freq_factor': 2.0}",
        ),
        ("LlamaForCausalLM", {"model_type": "llama", "attention_bias": True}, "attention_bias=True"),
        ("MistralForCausalLM", {"model_type": "mistral", "sliding_window": 0}, "sliding_window=0 is not supported"),
    ],
)
def test_unsupported_settings_are_refused(folder_with, arch, extra, fragment):
    from bridge_core import AutoBridge
    from bridge_core.errors import ConfigError

    folder = folder_with(arch, {**BASE, **extra})
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    assert fragment in str(err.value)
