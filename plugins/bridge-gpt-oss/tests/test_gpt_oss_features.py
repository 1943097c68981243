"""What makes GPT-OSS GPT-OSS, each shown to matter, and what the bridge refuses.

Ablations flip one setting of an otherwise exact conversion (fp32, TP=1) and check that transformers'
logits are then missed by far: the sliding window, the sinks, the ``swiglu_limit`` clamp (the toy's
expert weights are scaled so it binds), the ``+1`` on the linear half, YaRN.
"""

from __future__ import annotations

import json

import pytest
import torch
from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, hf_logits, sample_ids
from gpt_oss_toys import GPT_OSS, randomised_copy

SEQ = 64


@pytest.fixture(scope="module")
def gpt_oss(toy_model_factory, tmp_path_factory):
    return randomised_copy(toy_model_factory(ToyModel("GptOssForCausalLM", GPT_OSS)), tmp_path_factory.mktemp)


def logits_with(folder, after_load=None, **settings) -> torch.Tensor:
    """Megatron logits of ``folder`` at TP=1, provider ``settings`` overridden, ``after_load(model)`` applied."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        if after_load is not None:
            after_load(model)
        return forward_logits(model, sample_ids(1000, seq=SEQ), vocab_size=1000)
    finally:
        destroy_model_parallel()


def no_sinks(model) -> None:
    """Sink logits of -inf: the softmax of plain attention."""
    with torch.no_grad():
        for name, param in model[0].named_parameters():
            if name.endswith("softmax_offset"):
                param.fill_(float("-inf"))


ABLATIONS = {
    "window": ({"window_size": None}, None),
    "sinks": ({}, no_sinks),
    "clamp": ({"activation_func_clamp_value": None}, None),
    "glu_offset": ({"glu_linear_offset": 0.0}, None),
    "yarn": ({"position_embedding_type": "rope"}, None),
}


def test_every_feature_matters(gpt_oss):
    reference = hf_logits(gpt_oss, sample_ids(1000, seq=SEQ))
    exact = max_abs_diff(logits_with(gpt_oss), reference)
    assert exact <= 1e-4
    moved = {name: max_abs_diff(logits_with(gpt_oss, after, **s), reference) for name, (s, after) in ABLATIONS.items()}
    print(f"exact {exact:.2g}; ablated {', '.join(f'{k} {v:.2g}' for k, v in moved.items())}")
    assert all(v > 1e-2 for v in moved.values()), f"some feature is not exercised: {moved}"


def test_layer_types_set_the_window_pattern(gpt_oss):
    provider = AutoBridge.from_hf_pretrained(gpt_oss).to_megatron_provider()
    assert provider.window_size == (7, 0) and provider.window_attn_skip_freq == [1, 0]
    assert provider.softmax_type == "learnable" and provider.position_embedding_type == "yarn"
    assert (provider.yarn_rotary_scaling_factor, provider.yarn_original_max_position_embeddings) == (4.0, 128)
    assert provider.yarn_correction_range_round_to_int is False
    assert (provider.activation_func_clamp_value, provider.glu_linear_offset) == (7.0, 1.0)
    assert provider.add_bias_linear and provider.add_qkv_bias


def with_config(folder, tmp_path, **changes):
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if key == "rope_parameters":
            value = {**config["rope_parameters"], **value}
        config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"swiglu_alpha": 1.5}, r"swiglu_alpha=1\.5"),
        ({"attention_bias": False}, r"attention_bias=False"),
        ({"rope_parameters": {"mscale": 1.0}}, r"mscale=1\.0"),
        ({"rope_parameters": {"rope_type": "linear"}}, r"rope_type='linear'"),
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, r"layer_types="),
    ],
)
def test_untranslatable_configs_are_refused(gpt_oss, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        AutoBridge.from_hf_pretrained(with_config(gpt_oss, tmp_path, **changes)).to_megatron_provider()


def test_expert_tensor_parallel_above_one_is_refused(gpt_oss):
    provider = AutoBridge.from_hf_pretrained(gpt_oss).to_megatron_provider()
    provider.tensor_model_parallel_size = provider.expert_tensor_parallel_size = 2
    with pytest.raises(ConfigError, match=r"expert_tensor_parallel_size=2: GPT-OSS experts have biases"):
        provider.finalize()


def test_the_format_follows_names_and_quantization_config():
    from types import SimpleNamespace

    from bridge_gpt_oss.bridge import is_mxfp4

    bf16 = {"model.layers.0.mlp.experts.gate_up_proj", "model.layers.0.mlp.experts.down_proj"}
    mxfp4 = {f"model.layers.0.mlp.experts.{n}_{s}" for n in ("gate_up_proj", "down_proj") for s in ("blocks", "scales")}
    quantized = SimpleNamespace(quantization_config={"quant_method": "mxfp4"})
    assert is_mxfp4(bf16, SimpleNamespace()) is False
    assert is_mxfp4(mxfp4, quantized) is True
    with pytest.raises(ConfigError, match="no mxfp4 quantization_config"):
        is_mxfp4(mxfp4, SimpleNamespace())
    with pytest.raises(ConfigError, match="holds no \\*_blocks tensors"):
        is_mxfp4(bf16, quantized)
    with pytest.raises(ConfigError, match="holds model.layers.0.self_attn.q_proj.weight_scale_inv: only MXFP4"):
        is_mxfp4({*bf16, "model.layers.0.self_attn.q_proj.weight_scale_inv"}, SimpleNamespace())
    with pytest.raises(ConfigError, match="quant_method='fp8' is not supported"):
        is_mxfp4(bf16, SimpleNamespace(quantization_config={"quant_method": "fp8"}))


def test_published_gpt_oss_20b_config_translates_both_ways():
    """gpt-oss-20b's config.json values (no weights): every key survives HF -> provider -> HF."""
    from transformers import AutoConfig

    from bridge_gpt_oss.recipes import MODELS

    values = {k: v for k, v in MODELS["gpt_oss_20b"][1].items() if k not in ("model_type", "architecture")}
    # keys of the released config.json that transformers keeps but no model code reads
    values.update({"experts_per_token": 4, "initial_context_length": 4096, "dtype": "bfloat16"})
    config = AutoConfig.for_model("gpt_oss", architectures=["GptOssForCausalLM"], **values)
    bridge = AutoBridge.from_hf_config(config)
    provider = bridge.to_megatron_provider()
    assert (provider.num_moe_experts, provider.moe_router_topk, provider.window_size) == (32, 4, (127, 0))
    assert provider.window_attn_skip_freq == [1, 0] * 12 and provider.yarn_rotary_scaling_factor == 32.0
    source, regenerated = config.to_dict(), bridge.hf_config_for_export(provider).to_dict()
    skip = {"quantization_config"}  # export writes bf16
    assert {k: (v, regenerated.get(k)) for k, v in source.items() if k not in skip and regenerated.get(k) != v} == {}
