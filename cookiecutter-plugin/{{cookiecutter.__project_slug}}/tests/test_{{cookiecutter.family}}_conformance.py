{%- set archs = cookiecutter.architectures.split(',') | map('trim') | list -%}
"""{{ cookiecutter.__project_slug }} against bridge-core's conformance suite.

For each toy below the suite checks registration (entry point, contract range, bridge-core pin, no
heavy import at discovery), config translation both ways, coverage, a bit-exact HF -> Megatron -> HF
roundtrip, fp32 logits within 1e-4 of transformers, and TP=2 / PP=2 on the CPU (gloo); tests marked
``gpu`` repeat the layouts on two GPUs (NCCL). Add a toy for every variant you support (tied
embeddings, another head layout, RoPE scaling ...) and tests of your own below the class.
"""

from __future__ import annotations
{%- if cookiecutter.kind == 'VLM' %}

import json

import pytest
{%- endif %}

from bridge_core.testing.conformance import BridgeConformance, ToyModel

MODEL_TYPE = "{{ cookiecutter.model_type }}"
{%- if cookiecutter.kind == 'LLM' %}
# A tiny model of the real shape: 4 query heads of 16 channels in 2 KV groups and 2 layers, so that TP=2
# and PP=2 fit; a vocabulary that is not a multiple of Megatron's padding. Every other setting keeps its
# default, so a default the bridge cannot convert shows up here.
TOY = {
    "model_type": MODEL_TYPE,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}


class Test{{ cookiecutter.__family_title }}Conformance(BridgeConformance):
    plugin = "{{ cookiecutter.family }}"
    toys = {
{%- for arch in archs %}
        "{{ arch | replace('ForCausalLM', '') | lower }}": ToyModel("{{ arch }}", TOY),
        "{{ arch | replace('ForCausalLM', '') | lower }}-tied-bf16": ToyModel(
            "{{ arch }}",
            {**TOY, "tie_word_embeddings": True},
            dtype="bfloat16",
        ),
{%- endfor %}
    }
{%- else %}


class Test{{ cookiecutter.__family_title }}Conformance(BridgeConformance):
    """Registration checks only until the VLM bridge exists: add toys once it converts (see bridge.py)."""

    plugin = "{{ cookiecutter.family }}"
    toys: dict[str, ToyModel] = {}


@pytest.mark.parametrize("architecture", {{ archs | tojson }})
def test_unimplemented_vlm_bridge_says_what_is_missing(architecture, tmp_path, isolated_registry):
    from bridge_core import AutoBridge
    from bridge_core.errors import ConfigError

    isolated_registry.register("{{ cookiecutter.__module_name }}.plugin")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": MODEL_TYPE}))
    with pytest.raises(ConfigError, match="vision tower"):
        AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()
{%- endif %}
