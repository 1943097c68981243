"""Parallel sizes the model's shape rules out are refused from its JSON config, before any rank or torch."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

import pytest

from bridge_core.errors import ConfigError

LLAMA_4_HEADS = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 256,
}

# Runs ``bridgectl`` in a fresh interpreter with the rank launcher replaced by a recorder, and an
# in-process plugin serving LlamaForCausalLM (whatever plugins are installed).
RUN = """
import json, sys, types
from bridge_core import hookimpl
from bridge_core.cli import launcher, main
from bridge_core.plugins.registry import Registry
from bridge_core.plugins.discovery import reset_registry
toy = types.ModuleType("toy_plugin")
toy.BRIDGE_CONTRACT = ">=1.0,<2"
toy.register_bridges = hookimpl(lambda register: register(architecture="LlamaForCausalLM", bridge="toy:Bridge"))
registry = Registry()
registry.add_plugin(toy, name="toy", strict=True)
reset_registry(registry)
started = []
launcher.spawn_ranks = lambda argv, world: started.append(world) or 0
code = main.main({argv!r})
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "megatron", "transformers", "safetensors"}})
print(json.dumps({{"code": code, "started": started, "heavy": heavy}}))
"""


def bridgectl(*argv: str) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN.format(argv=list(argv)))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr.strip()


@pytest.fixture
def hf_folder(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_4_HEADS))
    return folder


@pytest.mark.parametrize("tp", ["3", "8"])
def test_import_with_tp_not_dividing_heads_starts_no_rank_and_imports_nothing_heavy(hf_folder, tmp_path, tp):
    report, err = bridgectl("import", "--hf-model", str(hf_folder), "--megatron-path", str(tmp_path / "m"), "--tp", tp)
    assert report == {"code": 2, "started": [], "heavy": []}
    assert err == (
        f"bridgectl import: error: {hf_folder / 'config.json'}: tensor parallel size {tp} does not divide "
        "num_attention_heads=4 (tensor_model_parallel_size / --tp); valid sizes: 1, 2"
    )


def test_pp_not_dividing_layers_is_refused_before_ranks(hf_folder, tmp_path):
    report, err = bridgectl("import", "--hf-model", str(hf_folder), "--megatron-path", str(tmp_path / "m"), "--pp", "3")
    assert report["started"] == [] and report["code"] == 2
    assert "pipeline parallel size 3 (x virtual 1) does not divide num_layers=2" in err


def test_valid_sizes_still_start_the_ranks(hf_folder, tmp_path):
    report, err = bridgectl(
        "import", "--hf-model", str(hf_folder), "--megatron-path", str(tmp_path / "m"), "--tp", "2", "--workers", "2"
    )
    assert report == {"code": 0, "started": [2], "heavy": []}, err


def test_export_checks_the_checkpoints_run_config(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest_checkpointed_iteration.txt").write_text("0")
    settings = {"num_attention_heads": 4, "num_query_groups": 4, "num_layers": 2, "vocab_size": 256}
    (ckpt / "run_config.json").write_text(json.dumps({"provider": {**settings, "num_moe_experts": 6}}))
    report, err = bridgectl("export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "hf"), "--ep", "4")
    assert report == {"code": 2, "started": [], "heavy": []}
    assert err.startswith(f"bridgectl export: error: {ckpt / 'run_config.json'}: expert parallel size 4 does not")


@pytest.mark.parametrize("etp", ["0", "-1"])
def test_etp_below_one_is_a_one_line_error(hf_folder, tmp_path, etp):
    argv = ("import", "--hf-model", str(hf_folder), "--megatron-path", str(tmp_path / "m"), "--tp", "2", "--etp", etp)
    report, err = bridgectl(*argv)
    assert report["code"] == 2 and report["started"] == []
    assert err == f"bridgectl import: error: --etp must be at least 1, got {etp}"


def test_parallelism_accepts_an_unset_etp():
    from bridge_core.cli.common import parallelism

    args = argparse.Namespace(tp=2, pp=1, ep=1, etp=None)
    assert parallelism(args).world_size == 2
    with pytest.raises(ConfigError, match="--etp must be at least 1, got 0"):
        parallelism(argparse.Namespace(tp=2, pp=1, ep=1, etp=0))


def test_shapes_from_both_configs_agree():
    from bridge_core.runtime.parallel_checks import shape_from_hf_config, shape_from_provider_settings

    provider = {"num_attention_heads": 4, "num_query_groups": 2, "num_layers": 2, "vocab_size": 256}
    assert shape_from_hf_config(LLAMA_4_HEADS) == shape_from_provider_settings(provider)


def test_malformed_values_are_left_to_the_full_validation():
    from bridge_core.runtime.parallel_checks import ModelShape, check_parallel_sizes, shape_from_hf_config

    shape = shape_from_hf_config({"num_attention_heads": "four", "num_hidden_layers": True, "vocab_size": -1})
    assert shape == ModelShape()
    check_parallel_sizes(shape, tp=3, pp=5)  # nothing known, nothing refused


def test_kv_heads_and_padded_vocab_rules():
    from bridge_core.runtime.parallel_checks import ModelShape, check_parallel_sizes

    with pytest.raises(ConfigError, match=r"num_query_groups \(KV heads\)=2 .*valid sizes: 1, 2$"):
        check_parallel_sizes(ModelShape(num_attention_heads=8, num_query_groups=2), tp=4)
    with pytest.raises(ConfigError, match="padded_vocab_size=1001 is not divisible by tensor parallel size 2"):
        check_parallel_sizes(ModelShape(padded_vocab_size=1001), tp=2)


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "0", "abc"])
def test_positive_float_refuses(text):
    from bridge_core.cli.common import positive_float

    with pytest.raises(argparse.ArgumentTypeError):
        positive_float(text)


def test_positive_float_accepts():
    from bridge_core.cli.common import positive_float

    assert positive_float("1e-4") == 1e-4


@pytest.mark.parametrize("command", ["verify", "roundtrip"])
@pytest.mark.parametrize("atol", ["nan", "-1"])
def test_atol_that_is_not_a_positive_number_is_refused(tmp_path, command, atol):
    argv = ["--hf-model", str(tmp_path), "--atol", atol]
    argv += ["--megatron-path", str(tmp_path)] if command == "verify" else []
    proc = subprocess.run(
        [sys.executable, "-m", "bridge_core.cli.main", command, *argv], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert f"argument --atol: expected a positive finite number, got '{atol}'" in proc.stderr


def write_gguf(path, heads: int = 4, kv_heads: int = 2, layers: int = 2):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_source_is_checked_from_its_header_before_it_is_dequantized(tmp_path):
    source = write_gguf(tmp_path / "toy.gguf")
    report, err = bridgectl("import", "--hf-model", str(source), "--megatron-path", str(tmp_path / "m"), "--tp", "4")
    assert report == {"code": 2, "started": [], "heavy": []}  # transformers (the dequantizer) never imported
    assert err == (
        f"bridgectl import: error: {source}: tensor parallel size 4 does not divide "
        "num_query_groups (KV heads)=2 (tensor_model_parallel_size / --tp); valid sizes: 1, 2"
    )


def test_gguf_header_shape(tmp_path):
    from bridge_core.runtime.parallel_checks import ModelShape, shape_from_gguf

    shape = shape_from_gguf(str(write_gguf(tmp_path / "toy.gguf", heads=6, kv_heads=3, layers=5)))
    assert shape == ModelShape(num_attention_heads=6, num_query_groups=3, num_layers=5, vocab_size=3)
    assert shape_from_gguf(str(tmp_path / "missing.gguf")) is None  # left to the real reader
