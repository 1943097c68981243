"""Inputs checked where they enter (issue 12): config.json sizes and dtypes, the checkpoint folder's
tracker and run_config.json, provider settings across megatron-core versions, both RoPE spellings."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import _test_bridges
import pytest
import torch
from megatron.core import package_info

from bridge_core import AutoBridge
from bridge_core.checkpoints.checkpoint_format import load_megatron_checkpoint, provider_kwargs_from_run_config
from bridge_core.errors import CheckpointError, ConfigError
from bridge_core.model.provider import GPTModelProvider
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel, build_toy

FIXTURES = Path(__file__).parent / "fixtures"
INSTALLED = package_info.__version__
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "vocab_size": 128,
    "max_position_embeddings": 64,
}


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def provider_for(tmp_path: Path, **changes):
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA, **changes}))
    return AutoBridge.from_hf_pretrained(tmp_path).to_megatron_provider()


# -- config.json ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [("num_hidden_layers", 0), ("intermediate_size", -8), ("vocab_size", 0)])
def test_impossible_sizes_are_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError) as err:
        provider_for(tmp_path, **{key: value})
    assert one_line(err) == f"config.json: {key}={value!r} must be a positive integer"


@pytest.mark.parametrize("key", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("value", ["int8", "float8_e4m3fn", "float64", "bool"])
def test_non_float_dtypes_are_refused(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"^config.json (torch_)?dtype: unsupported dtype .*{value}"):
        provider_for(tmp_path, **{key: value})


# -- the checkpoint folder ------------------------------------------------------------------------
def checkpoint_folder(tmp_path: Path, tracker: bytes, run_config: dict | None = None) -> Path:
    (tmp_path / "iter_0000000").mkdir()
    (tmp_path / "iter_0000000" / "metadata.json").write_text("{}")
    (tmp_path / "latest_checkpointed_iteration.txt").write_bytes(tracker)
    (tmp_path / "run_config.json").write_text(json.dumps(run_config or {"provider": {}}))
    return tmp_path


@pytest.mark.parametrize("tracker", ["²".encode(), "٠".encode(), b"\x00\xff\xfe0", b"0\x00", b"-0"])
def test_tracker_that_is_not_an_ascii_number_is_refused(tmp_path, tracker):
    path = checkpoint_folder(tmp_path, tracker)
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(path)
    assert one_line(err).startswith(f"{path / 'latest_checkpointed_iteration.txt'}: expected an iteration number")


def test_unknown_model_setting_in_run_config_is_a_one_line_error(tmp_path):
    provider = fixture_provider(INSTALLED)
    path = checkpoint_folder(tmp_path, b"0", {"provider": {**provider, "sparse_frobnication": 3}})
    with pytest.raises(CheckpointError) as err:
        load_megatron_checkpoint(path).provider_kwargs()
    assert one_line(err).startswith(f"{path}/run_config.json: provider setting sparse_frobnication=3")
    assert "would change the model" in str(err.value)


def test_impossible_saved_sizes_are_refused(tmp_path):
    provider = {**fixture_provider(INSTALLED), "num_layers": 0}
    with pytest.raises(CheckpointError, match=r"run_config.json provider: num_layers=0 must be a positive integer"):
        provider_kwargs_from_run_config({"provider": provider})


# -- megatron-core versions -----------------------------------------------------------------------
def fixture_provider(version: str) -> dict:
    """The ``provider`` section of run_config.json as bridge-core wrote it under megatron-core ``version``
    (captured once under 0.16.1 and 0.19.2; the real key sets of both)."""
    known = {"0.16": "0.16.1", "0.19": "0.19.2"}
    name = known.get(".".join(version.split(".")[:2]), "0.16.1")
    return json.loads((FIXTURES / f"mcore_provider_{name}.json").read_text())["provider"]


@pytest.mark.parametrize("written_by", ["0.16.1", "0.19.2"])
def test_run_config_written_under_either_megatron_core_rebuilds_the_model(written_by):
    saved = fixture_provider(written_by)
    run_config = {"provider": saved, "versions": {"megatron_core": written_by}}
    kwargs = provider_kwargs_from_run_config(run_config)
    provider = GPTModelProvider(**kwargs).finalize()  # a TypeError or a conflict before the fix
    for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"):
        assert getattr(provider, name) == saved[name]
    assert provider.params_dtype == torch.bfloat16 and provider.activation_func is torch.nn.functional.silu


def test_fixtures_hold_the_keys_each_version_lacks():
    old, new = set(fixture_provider("0.16.1")), set(fixture_provider("0.19.2"))
    assert "moe_extended_tp" in old - new and "tensor_parallel_num_weight_shards" in new - old


def test_foreign_setting_that_changes_the_model_is_refused():
    # use_mup exists only in 0.19.2; turned on it changes the model, which 0.16.1 cannot build
    saved = {**fixture_provider("0.19.2"), "use_mup": True}
    if "use_mup" in {f for f in GPTModelProvider.__dataclass_fields__}:
        saved = {**fixture_provider("0.16.1"), "moe_use_legacy_grouped_gemm": False, "sparse_frobnication": 1}
        name, value = "sparse_frobnication", 1
    else:
        name, value = "use_mup", True
    with pytest.raises(CheckpointError, match=rf"provider setting {name}={value!r} \(written by megatron-core"):
        provider_kwargs_from_run_config({"provider": saved, "versions": {"megatron_core": "x"}})


def test_setting_recorded_at_its_default_by_the_writer_is_dropped():
    saved = {**fixture_provider(INSTALLED), "some_future_field": 17}
    kwargs = provider_kwargs_from_run_config({"provider": saved, "provider_at_default": ["some_future_field"]})
    assert "some_future_field" not in kwargs


def test_saved_run_config_records_the_settings_at_their_default():
    from bridge_core.checkpoints.checkpoint_format import run_config_document

    provider = GPTModelProvider(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128)
    document = run_config_document(provider, {}, 1)
    assert "moe_router_topk" in document["provider_at_default"] and "num_layers" not in document["provider_at_default"]


# -- both RoPE spellings --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rope",
    [
        {"rope_theta": 500000.0},
        {
            "rope_theta": 500000.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            "max_position_embeddings": 16384,
        },
    ],
    ids=["default", "llama3"],
)
def test_exported_config_has_both_rope_spellings(tmp_path, rope):
    from transformers import AutoConfig

    config = {k: v for k, v in LLAMA.items() if k != "architectures"}
    expected = copy.deepcopy(rope.get("rope_scaling"))  # transformers adds rope_theta to the dict it is given
    folder = build_toy(ToyModel("LlamaForCausalLM", {**config, **copy.deepcopy(rope)}), tmp_path / "hf")
    bridge = AutoBridge.from_hf_pretrained(folder)
    model = bridge.to_megatron_provider(load_weights=True).provide_distributed_model(wrap_with_ddp=False)
    bridge.save_hf_pretrained(model, tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    # transformers 4.5x reads rope_theta/rope_scaling; transformers 5 reads rope_parameters
    params = exported["rope_parameters"]
    assert exported["rope_theta"] == params["rope_theta"] == 500000.0
    assert exported["rope_scaling"] == expected
    assert (
        AutoConfig.from_pretrained(tmp_path / "out").rope_parameters
        == AutoConfig.from_pretrained(folder).rope_parameters
    )


def test_legacy_rope_entries():
    from bridge_core.model.config_translation import legacy_rope_entries

    assert legacy_rope_entries({"rope_type": "default", "rope_theta": 1e4}) == {"rope_theta": 1e4, "rope_scaling": None}
    linear = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    assert legacy_rope_entries(linear) == {"rope_theta": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
