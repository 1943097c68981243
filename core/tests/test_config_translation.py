"""HF config <-> provider translation: RoPE in both transformers generations, dtypes, key tables, unknown keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers

from bridge_core.errors import ConfigError
from bridge_core.model.config_translation import (
    check_hf_config,
    hf_dtype,
    hf_to_provider,
    parse_dtype,
    provider_to_hf,
    read_rope,
    rope_to_hf,
)
from bridge_core.model.decoder import LLAMA3_FIXED, DecoderBridge, rope_hf_entries, rope_kwargs

MAPPING = [("num_hidden_layers", "num_layers"), ("hidden_size", "hidden_size"), ("head_dim", "kv_channels")]


# -- read_rope / rope_to_hf -----------------------------------------------------------------------
def test_read_rope_from_transformers5_rope_parameters():
    cfg = SimpleNamespace(rope_parameters={"rope_theta": 500000, "rope_type": "llama3", "factor": 8.0})
    theta, scaling = read_rope(cfg)
    assert theta == 500000.0 and isinstance(theta, float)
    assert scaling == {"rope_type": "llama3", "factor": 8.0}


def test_read_rope_from_a_real_transformers_config():
    assert read_rope(transformers.LlamaConfig()) == (10000.0, {"rope_type": "default"})


def test_read_rope_from_transformers4_renames_type_to_rope_type():
    original = {"type": "linear", "factor": 2.0}
    cfg = SimpleNamespace(rope_theta=1e6, rope_scaling=original)
    assert read_rope(cfg) == (1e6, {"rope_type": "linear", "factor": 2.0})
    assert original == {"type": "linear", "factor": 2.0}  # the config itself is not modified


def test_read_rope_keeps_rope_type_over_legacy_type():
    cfg = SimpleNamespace(rope_theta=1e4, rope_scaling={"type": "x", "rope_type": "llama3"})
    assert read_rope(cfg)[1]["rope_type"] == "llama3"


def test_read_rope_without_scaling_gives_empty_scaling():
    assert read_rope(SimpleNamespace(rope_theta=1e4, rope_scaling=None)) == (1e4, {})


def test_read_rope_falls_back_when_rope_parameters_lacks_theta():
    cfg = SimpleNamespace(rope_parameters={"rope_type": "default"}, rope_theta=2e4)
    assert read_rope(cfg)[0] == 2e4


def test_read_rope_without_theta_is_an_error():
    with pytest.raises(ConfigError, match="no rope_theta"):
        read_rope(SimpleNamespace(rope_scaling={"rope_type": "default"}))


def test_rope_to_hf_uses_rope_parameters_with_transformers5():
    assert int(transformers.__version__.split(".")[0]) >= 5
    assert rope_to_hf(1e4, None) == {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}
    scaling = {"rope_type": "linear", "factor": 2.0}
    assert rope_to_hf(5e5, scaling) == {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}}
    assert scaling == {"rope_type": "linear", "factor": 2.0}


# -- decoder.rope_kwargs / rope_hf_entries --------------------------------------------------------
def rope_cfg(theta=1e4, **scaling):
    return SimpleNamespace(rope_parameters={"rope_theta": theta, **scaling})


def test_rope_kwargs_default():
    assert rope_kwargs(rope_cfg(rope_type="default")) == {"rotary_base": 1e4, "position_embedding_type": "rope"}


def test_rope_kwargs_without_rope_type_is_default():
    assert rope_kwargs(SimpleNamespace(rope_theta=3e4)) == {"rotary_base": 3e4, "position_embedding_type": "rope"}


def test_rope_kwargs_linear_sets_interpolation_factor():
    kwargs = rope_kwargs(rope_cfg(rope_type="linear", factor=4))
    assert kwargs["seq_len_interpolation_factor"] == 4.0 and "rope_scaling" not in kwargs


@pytest.mark.parametrize("constants", [LLAMA3_FIXED, {}], ids=["explicit", "omitted"])
def test_rope_kwargs_llama3_with_fixed_constants(constants):
    kwargs = rope_kwargs(rope_cfg(5e5, rope_type="llama3", factor=8, **constants))
    assert kwargs == {
        "rotary_base": 5e5,
        "position_embedding_type": "rope",
        "rope_scaling": True,
        "rope_scaling_factor": 8.0,
    }


def test_rope_kwargs_llama3_with_other_low_freq_factor_is_refused():
    cfg = rope_cfg(rope_type="llama3", factor=8.0, **{**LLAMA3_FIXED, "low_freq_factor": 2.0})
    with pytest.raises(ConfigError) as err:
        rope_kwargs(cfg)
    assert "llama3 rope scaling with {'low_freq_factor': 2.0} is not supported" in str(err.value)


def test_rope_kwargs_refuses_yarn():
    with pytest.raises(ConfigError, match="rope type 'yarn' is not supported"):
        rope_kwargs(rope_cfg(rope_type="yarn", factor=4.0))


def provider(**overrides):
    base = dict(rotary_base=1e4, rope_scaling=False, rope_scaling_factor=8.0, seq_len_interpolation_factor=None)
    return SimpleNamespace(**{**base, **overrides})


@pytest.mark.parametrize(
    "settings",
    [{}, {"seq_len_interpolation_factor": 4.0}, {"rope_scaling": True, "rope_scaling_factor": 32.0}],
    ids=["default", "linear", "llama3"],
)
def test_rope_hf_entries_invert_rope_kwargs(settings):
    entries = rope_hf_entries(provider(rotary_base=5e5, **settings))
    kwargs = rope_kwargs(SimpleNamespace(**entries))
    assert kwargs == {"rotary_base": 5e5, "position_embedding_type": "rope", **settings}


def test_rope_hf_entries_write_llama3_constants():
    params = rope_hf_entries(provider(rope_scaling=True, rope_scaling_factor=8.0))["rope_parameters"]
    assert params == {"rope_type": "llama3", "factor": 8.0, **LLAMA3_FIXED, "rope_theta": 1e4}


# -- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,expected",
    [
        (torch.bfloat16, torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("bf16", torch.bfloat16),
        ("fp32", torch.float32),
        ("half", torch.float16),
        ("float", torch.float32),
    ],
)
def test_parse_dtype_variants(value, expected):
    assert parse_dtype(value) is expected


def test_parse_dtype_error_names_where_and_value():
    with pytest.raises(ConfigError, match=r"config.json dtype: unsupported dtype 'int8'"):
        parse_dtype("int8", "config.json dtype")


def test_hf_dtype_prefers_dtype_then_torch_dtype():
    assert hf_dtype(SimpleNamespace(dtype="bfloat16", torch_dtype="float32")) is torch.bfloat16
    assert hf_dtype(SimpleNamespace(dtype=None, torch_dtype="float16")) is torch.float16
    assert hf_dtype(SimpleNamespace()) is None


# -- key tables -----------------------------------------------------------------------------------
def test_hf_to_provider_skips_missing_and_none_keys():
    cfg = SimpleNamespace(num_hidden_layers=2, hidden_size=None)
    assert hf_to_provider(cfg, MAPPING) == {"num_layers": 2}


def test_provider_to_hf_skips_none_attributes():
    prov = SimpleNamespace(num_layers=2, hidden_size=64, kv_channels=None)
    assert provider_to_hf(prov, MAPPING) == {"num_hidden_layers": 2, "hidden_size": 64}


def test_key_tables_roundtrip_a_real_config():
    cfg = transformers.LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4)
    kwargs = hf_to_provider(cfg, MAPPING)
    assert kwargs == {"num_layers": 3, "hidden_size": 64, "kv_channels": 16}
    assert provider_to_hf(SimpleNamespace(**kwargs), MAPPING) == {
        "num_hidden_layers": 3,
        "hidden_size": 64,
        "head_dim": 16,
    }


# -- check_hf_config ------------------------------------------------------------------------------
# The keys the stock decoder translates (sizes, RoPE); the tests below vary the rest.
STOCK_HANDLED = {k for k, _ in DecoderBridge.CONFIG_MAPPING} | set(DecoderBridge.HANDLED_HF_CONFIG) | {"pretraining_tp"}


def check(cfg, handled=None, supported=None):
    handled = STOCK_HANDLED if handled is None else set(handled)
    supported = {"hidden_act": "silu", **(supported or {})}
    check_hf_config(cfg, handled=handled, supported=supported, where="ToyBridge")


def no_mlp_bias(value, hf_config):
    """no MLP bias"""
    return value is False


def test_default_config_passes():
    check(transformers.LlamaConfig(), supported=DecoderBridge.SUPPORTED_HF_CONFIG)


def test_neutral_keys_are_ignored():
    cfg = transformers.LlamaConfig(bos_token_id=7, eos_token_id=9, architectures=["X"], max_position_embeddings=99)
    cfg.unk_token_id, cfg._model_name_or_path = 3, "a GGUF's name"
    check(cfg, supported=DecoderBridge.SUPPORTED_HF_CONFIG)


def test_handled_keys_are_ignored_and_unhandled_ones_named():
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=4)
    others = {"hidden_act", "pretraining_tp"}
    check(cfg, handled=STOCK_HANDLED | others)
    with pytest.raises(ConfigError, match=r"^ToyBridge: .*hidden_size=64 \(not understood\)"):
        check(cfg, handled=(STOCK_HANDLED | others) - {"hidden_size"})


def test_supported_constant_value_passes():
    check(transformers.LlamaConfig(hidden_act="silu"), supported={"hidden_act": "silu"})


def test_supported_constant_with_another_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"hidden_act='gelu' \(supported: "):
        check(transformers.LlamaConfig(hidden_act="gelu"), supported={"hidden_act": "silu"})


def test_supported_constant_error_shows_the_supported_value():
    with pytest.raises(ConfigError) as err:
        check(transformers.LlamaConfig(hidden_act="gelu"), supported={"hidden_act": "silu"})
    assert "hidden_act='gelu' (supported: 'silu')" in str(err.value) and "\n" not in str(err.value)


def test_predicate_failure_shows_its_docstring():
    with pytest.raises(ConfigError, match=r"mlp_bias=True \(supported: no MLP bias\)"):
        check(transformers.LlamaConfig(mlp_bias=True), supported={"mlp_bias": no_mlp_bias})
    check(transformers.LlamaConfig(mlp_bias=False), supported={"mlp_bias": no_mlp_bias})


def test_predicate_receives_the_config():
    def heads_divide_hidden(value, hf_config):
        """head_dim = hidden_size / num_attention_heads"""
        return value == hf_config.hidden_size // hf_config.num_attention_heads

    handled = STOCK_HANDLED - {"head_dim"}
    check(transformers.LlamaConfig(), handled=handled, supported={"head_dim": heads_divide_hidden})
    with pytest.raises(ConfigError, match=r"head_dim=64 \(supported: head_dim = hidden_size"):
        check(transformers.LlamaConfig(head_dim=64), handled=handled, supported={"head_dim": heads_divide_hidden})


def test_unknown_key_holding_an_off_default_passes():
    check(transformers.LlamaConfig(mlp_bias=False), handled=STOCK_HANDLED | {"hidden_act", "pretraining_tp"})


def test_unknown_key_holding_a_default_that_switches_something_on_is_refused():
    # MistralConfig() defaults sliding_window to 4096: "equals the default" must not let a window through.
    cfg = transformers.MistralConfig(sliding_window=4096)
    with pytest.raises(ConfigError, match=r"sliding_window=4096 \(not understood\)"):
        check(cfg, handled=STOCK_HANDLED | {"hidden_act"})


def test_unknown_key_with_another_value_is_an_error():
    with pytest.raises(ConfigError, match=r"pretraining_tp=2 \(not understood\)"):
        check(transformers.LlamaConfig(pretraining_tp=2), handled=STOCK_HANDLED - {"pretraining_tp"})


def test_key_transformers_may_read_but_the_class_does_not_define_is_an_error():
    # transformers' mask code reads attention_chunk_size (Llama 4's chunked attention) from any config.
    with pytest.raises(ConfigError, match=r"attention_chunk_size=128 \(not understood\)"):
        check(transformers.LlamaConfig(attention_chunk_size=128), supported=DecoderBridge.SUPPORTED_HF_CONFIG)


def test_key_transformers_never_reads_passes():
    cfg = transformers.LlamaConfig(sliding_window_size=128, is_llama_config=True, rope_interleaved=False)
    check(cfg, supported=DecoderBridge.SUPPORTED_HF_CONFIG)


def test_every_problem_is_listed_in_one_error():
    cfg = transformers.LlamaConfig(pretraining_tp=2, mlp_bias=True)
    with pytest.raises(ConfigError) as err:
        check(cfg, handled=STOCK_HANDLED - {"pretraining_tp"}, supported={"mlp_bias": no_mlp_bias})
    assert "mlp_bias=True" in str(err.value) and "pretraining_tp=2" in str(err.value)
