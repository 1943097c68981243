"""Gemma's features each matter (turning one off breaks parity with transformers), greedy generation
equals transformers', and what cannot be reproduced is refused with a one-line error."""

from __future__ import annotations

import json

import pytest
import torch
from gemma_toys import GEMMA, GEMMA2, GEMMA3

from bridge_core import AutoBridge
from bridge_core.errors import ConfigError
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

SEQ = 20  # > the toy window (8)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    return build_toy(ToyModel("GemmaForCausalLM", GEMMA), tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    return build_toy(ToyModel("Gemma2ForCausalLM", GEMMA2), tmp_path_factory.mktemp("gemma2"))


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    return build_toy(ToyModel("Gemma3ForCausalLM", GEMMA3), tmp_path_factory.mktemp("gemma3"))


@pytest.fixture
def cleanup():
    yield
    destroy_model_parallel()


def build(folder, **overrides):
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in overrides.items():
        setattr(provider, key, value)
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    return bridge, provider, model


def max_diff(model, folder) -> float:
    ids = sample_ids(1000, seq=SEQ)
    return max_abs_diff(forward_logits(model, ids, vocab_size=1000), hf_logits(folder, ids))


def test_translation(gemma, gemma2):
    p = AutoBridge.from_hf_pretrained(gemma).to_megatron_provider()
    assert (p.layernorm_zero_centered_gamma, p.scale_embeddings, p.share_embeddings_and_output_weights) == (
        True,
        True,
        True,
    )
    assert (p.kv_channels, p.activation_func.__name__, p.window_size, p.sandwich_norms) == (
        32,
        "gelu_tanh",
        None,
        False,
    )
    p = AutoBridge.from_hf_pretrained(gemma2).to_megatron_provider()
    assert (p.softmax_scale, p.attn_logit_softcap, p.final_logit_softcap) == (24**-0.5, 0.5, 3.0)
    assert (p.window_size, p.window_attn_skip_freq, p.sandwich_norms) == ((7, 0), [1, 0], True)


@pytest.mark.parametrize(
    "ablation", [None, {"layernorm_zero_centered_gamma": False}, {"scale_embeddings": False}], ids=str
)
def test_gemma_features_matter(gemma, cleanup, ablation):
    _, _, model = build(gemma, **(ablation or {}))
    diff = max_diff(model, gemma)
    if ablation is None:
        assert diff <= 1e-4
    else:
        assert diff > 1e-2, f"{ablation}: {diff:.3g}"


ABLATIONS_2 = [
    None,
    {"attn_logit_softcap": None},
    {"final_logit_softcap": None},
    {"window_size": None},
    {"softmax_scale": None},  # query_pre_attn_scalar (24) != head_dim (32)
    "sandwich_norms",
]


@pytest.mark.parametrize("ablation", ABLATIONS_2, ids=str)
def test_gemma2_features_matter(gemma2, cleanup, ablation):
    _, _, model = build(gemma2, **(ablation if isinstance(ablation, dict) else {}))
    if ablation == "sandwich_norms":  # the same weights, without the post-attention and post-MLP norms
        for layer in model[0].decoder.layers:
            layer.self_attention.linear_proj.post_layernorm = torch.nn.Identity()
            layer.mlp.linear_fc2.post_layernorm = torch.nn.Identity()
    diff = max_diff(model, gemma2)
    if ablation is None:
        assert diff <= 1e-4
    else:
        assert diff > 1e-2, f"{ablation}: {diff:.3g}"


ABLATIONS_3 = [
    None,
    {"local_rotary_base": None},  # one RoPE base for every layer
    {"seq_len_interpolation_factor": None},  # the global layers' linear x8
    {"window_size": None},
    "qk_norms",
]


@pytest.mark.parametrize("ablation", ABLATIONS_3, ids=str)
def test_gemma3_features_matter(gemma3, cleanup, ablation):
    _, _, model = build(gemma3, **(ablation if isinstance(ablation, dict) else {}))
    if ablation == "qk_norms":  # the same weights, without the per-head query and key norms
        for layer in model[0].decoder.layers:
            layer.self_attention.q_layernorm = torch.nn.Identity()
            layer.self_attention.k_layernorm = torch.nn.Identity()
    diff = max_diff(model, gemma3)
    if ablation is None:
        assert diff <= 1e-4
    else:
        assert diff > 1e-2, f"{ablation}: {diff:.3g}"


def test_gemma3_translation_and_config_roundtrip(gemma3, cleanup, tmp_path):
    from bridge_core.testing.compare import compare_hf_weights

    bridge, p, model = build(gemma3)
    assert (p.rotary_base, p.seq_len_interpolation_factor, p.local_rotary_base) == (1e6, 8.0, 1e4)
    assert (p.qk_layernorm, p.window_attn_skip_freq, p.kv_channels * p.num_attention_heads) == (True, [1, 1, 1, 0], 128)
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(gemma3, tmp_path / "out") == []
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_parameters"] == GEMMA3["rope_parameters"]
    assert config["layer_types"] == GEMMA3["layer_types"]


def test_embedding_scale_is_rounded_to_the_weight_dtype(tmp_path, cleanup):
    """As transformers: sqrt(72) = 8.485 is 8.5 in bf16; a Python-float scale gives other products."""
    folder = build_toy(ToyModel("GemmaForCausalLM", {**GEMMA, "hidden_size": 72}, dtype="bfloat16"), tmp_path)
    _, _, model = build(folder)
    model[0].cpu()  # the ids and the expected products are on the CPU
    embedding = model[0].embedding
    ids = sample_ids(1000, batch=1, seq=64)
    got = embedding(ids, position_ids=None)[:, 0]  # [s, b, h] -> [s, h]
    rows = embedding.word_embeddings.weight[ids[0]]
    assert torch.equal(got, rows * torch.tensor(72**0.5, dtype=torch.bfloat16))
    assert not torch.equal(got, (rows.float() * 72**0.5).to(torch.bfloat16))


def test_sandwich_norms_and_zero_centred_weights_roundtrip_exactly(gemma2, cleanup, tmp_path):
    from safetensors.torch import load_file

    from bridge_core.testing.compare import compare_hf_weights

    bridge, _, model = build(gemma2)
    model[0].cpu()  # compared with the file's tensors (a GPU, when visible, holds the model)
    hf = load_file(gemma2 / "model.safetensors")
    layer = model[0].decoder.layers[1]
    post = layer.self_attention.linear_proj.post_layernorm.weight
    assert torch.equal(post, hf["model.layers.1.post_attention_layernorm.weight"])  # stored as is, no +1
    assert torch.equal(layer.pre_mlp_layernorm.weight, hf["model.layers.1.pre_feedforward_layernorm.weight"])
    assert torch.equal(
        layer.mlp.linear_fc2.post_layernorm.weight, hf["model.layers.1.post_feedforward_layernorm.weight"]
    )
    bridge.save_hf_pretrained(model, tmp_path / "out")
    assert compare_hf_weights(gemma2, tmp_path / "out") == []
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["sliding_window"], config["layer_types"]) == (8, ["sliding_attention", "full_attention"])
    assert (config["query_pre_attn_scalar"], config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (
        24,
        0.5,
        3.0,
    )
    assert config["hidden_activation"] == "gelu_pytorch_tanh" and config["head_dim"] == 32


@pytest.mark.parametrize("which", ["gemma", "gemma2", "gemma3"])
def test_greedy_generation_equals_transformers(gemma, gemma2, gemma3, cleanup, which):
    from transformers import AutoModelForCausalLM

    folder = {"gemma": gemma, "gemma2": gemma2, "gemma3": gemma3}[which]
    ids = torch.randint(3, 1000, (1, 12), generator=torch.Generator().manual_seed(3))
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=20)  # 32 tokens: 4x the window
    _, _, model = build(folder)
    eos = hf.generation_config.eos_token_id
    assert torch.equal(greedy_generate(model, ids, 20, eos_token_id=eos), expected)
    assert torch.equal(greedy_generate(model, ids, 20, eos_token_id=eos, use_cache=False), expected)


LINEAR = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}


@pytest.mark.parametrize(
    "arch,config,fragment",
    [
        ("GemmaForCausalLM", {**GEMMA, "hidden_act": "silu"}, "hidden_act='silu'"),
        ("Gemma2ForCausalLM", {**GEMMA2, "layer_types": ["sliding_attention", "linear_attention"]}, "layer_types="),
        ("Gemma2ForCausalLM", {**GEMMA2, "attn_logit_softcapping": -1.0}, "attn_logit_softcapping=-1.0"),
        ("Gemma2ForCausalLM", {**GEMMA2, "sliding_window": None}, "sliding_window=None"),
        (
            "Gemma3ForCausalLM",
            {**GEMMA3, "rope_parameters": {**GEMMA3["rope_parameters"], "sliding_attention": LINEAR}},
            "rope_parameters.sliding_attention.rope_type='linear'",
        ),
    ],
)
def test_unsupported_settings_are_refused(tmp_path, arch, config, fragment):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
    with pytest.raises(ConfigError) as err:
        AutoBridge.from_hf_pretrained(folder).to_megatron_provider()
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_transformer_engine_spec_is_refused(gemma):
    provider = AutoBridge.from_hf_pretrained(gemma).to_megatron_provider()
    provider.transformer_layer_spec = "te"
    with pytest.raises(ConfigError, match="transformer_layer_spec='te' is not supported by bridge-gemma"):
        provider.layer_spec()


# google/gemma-3-1b-pt's config.json as published (transformers 4.50 wrote it: sliding_window_pattern, no layer_types)
GEMMA3_1B_PT = {
    "architectures": ["Gemma3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "attn_logit_softcapping": None,
    "bos_token_id": 2,
    "cache_implementation": "hybrid",
    "eos_token_id": 1,
    "final_logit_softcapping": None,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "hidden_size": 1152,
    "initializer_range": 0.02,
    "intermediate_size": 6912,
    "max_position_embeddings": 32768,
    "model_type": "gemma3_text",
    "num_attention_heads": 4,
    "num_hidden_layers": 26,
    "num_key_value_heads": 1,
    "pad_token_id": 0,
    "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06,
    "rope_local_base_freq": 10000,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "sliding_window": 512,
    "sliding_window_pattern": 6,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "use_cache": True,
    "vocab_size": 262144,
}


def test_the_published_gemma3_1b_config_converts_with_its_window_pattern(tmp_path):
    from transformers import AutoConfig

    (tmp_path / "config.json").write_text(json.dumps(GEMMA3_1B_PT))
    p = AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()
    layer_types = AutoConfig.from_pretrained(tmp_path).layer_types  # transformers' reading of the pattern
    assert p.window_attn_skip_freq == [int(t == "sliding_attention") for t in layer_types]
    assert p.window_attn_skip_freq[:6] == [1, 1, 1, 1, 1, 0] and p.window_size == (511, 0)
    assert (p.rotary_base, p.local_rotary_base, p.num_layers) == (1e6, 1e4, 26)
