"""``bridgectl`` on what users really have: published configs (extra keys) and bf16 checkpoints (issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _published_configs import QWEN2_5_0_5B
from test_cli import LLAMA, assert_one_line_error, bridgectl

from bridge_core.testing.toy import ToyModel, build_toy


@pytest.fixture(scope="module")
def bf16_toy(tmp_path_factory) -> Path:
    folder = build_toy(ToyModel("LlamaForCausalLM", LLAMA, dtype="bfloat16"), tmp_path_factory.mktemp("bf16"))
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    return folder


@pytest.fixture(scope="module")
def bf16_checkpoint(bf16_toy, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bf16-ckpt") / "megatron"
    proc = bridgectl("import", "--hf-model", str(bf16_toy), "--megatron-path", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


def test_verify_checks_a_bf16_checkpoint_in_fp32(bf16_toy, bf16_checkpoint):
    proc = bridgectl("verify", "--hf-model", str(bf16_toy), "--megatron-path", str(bf16_checkpoint))
    assert proc.returncode == 0, proc.stderr
    assert "verify: tensors: 21/21 bit-identical" in proc.stdout
    assert "(fp32)" in proc.stdout and "verify: OK" in proc.stdout


def test_roundtrip_of_a_bf16_model(bf16_toy):
    proc = bridgectl("roundtrip", "--hf-model", str(bf16_toy))
    assert proc.returncode == 0, proc.stderr
    assert "roundtrip: HF -> Megatron -> HF: bit-identical" in proc.stdout and "verify: OK" in proc.stdout


def test_a_bf16_checkpoint_loads_into_an_fp32_model(bf16_toy, bf16_checkpoint, monkeypatch):
    # what `generate --megatron-path ... --torch-dtype float32` does: built in fp32, not cast afterwards
    import torch

    from bridge_core.conversion.workflows import load_checkpoint
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallel import destroy_model_parallel
    from bridge_core.runtime.parallelism import Parallelism
    from bridge_core.testing.toy import hf_logits, sample_ids

    monkeypatch.setenv("BRIDGE_PLUGINS", "llama")
    reset_registry()
    try:
        loaded = load_checkpoint(bf16_checkpoint, Parallelism(), dtype="float32")
        assert loaded.saved_dtype == torch.bfloat16 and loaded.provider.params_dtype == torch.float32
        assert not loaded.provider.bf16
        ids = sample_ids(LLAMA["vocab_size"], batch=1, seq=16)
        logits = forward_logits(loaded.model, ids, vocab_size=LLAMA["vocab_size"])
        assert (logits - hf_logits(bf16_toy, ids, dtype=torch.float32)).abs().max().item() <= 1e-4
    finally:
        destroy_model_parallel()
        reset_registry()


def test_a_setting_the_bridge_does_not_reproduce_is_refused_naming_the_override(tmp_path):
    folder = tmp_path / "qwen2.5-windowed"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN2_5_0_5B, "use_sliding_window": True}))
    proc = bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "out"))
    assert_one_line_error(proc, "bridgectl import: error:", "use_sliding_window=True", "--accept-config sliding_window")
    assert not (tmp_path / "out").exists()
    # accepted, the config passes: the import goes on to the weights (this folder has none)
    out = str(tmp_path / "out")
    keys = ("sliding_window", "max_window_layers", "use_sliding_window")
    accept = [arg for key in keys for arg in ("--accept-config", key)]
    proc = bridgectl("import", "--hf-model", str(folder), "--megatron-path", out, *accept)
    line = assert_one_line_error(proc, "bridgectl import: error:", "safetensors")
    assert "sliding_window" not in line


# -- export --hf-model must describe the checkpoint -------------------------------------------------
def config_folder(path: Path, config: dict) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_export_refuses_a_reference_of_another_family(bf16_checkpoint, tmp_path):
    qwen3 = {**LLAMA, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "head_dim": 16}
    reference = config_folder(tmp_path / "qwen3", qwen3)
    out = tmp_path / "out"
    proc = bridgectl(
        "export", "--megatron-path", str(bf16_checkpoint), "--hf-path", str(out), "--hf-model", str(reference)
    )
    assert_one_line_error(proc, "bridgectl export: error:", "Qwen3ForCausalLM", "LlamaForCausalLM", str(reference))
    assert not out.exists()


def test_a_reference_with_other_config_values_is_refused(bf16_toy, bf16_checkpoint, tmp_path, monkeypatch):
    from bridge_core.conversion.workflows import export_checkpoint
    from bridge_core.errors import ConfigError
    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.runtime.parallel import destroy_model_parallel
    from bridge_core.runtime.parallelism import Parallelism

    config = json.loads((bf16_toy / "config.json").read_text())
    reference = config_folder(tmp_path / "deeper", {**config, "num_hidden_layers": 4, "rms_norm_eps": 1e-5})
    monkeypatch.setenv("BRIDGE_PLUGINS", "llama")
    reset_registry()
    try:
        with pytest.raises(ConfigError) as err:
            export_checkpoint(bf16_checkpoint, tmp_path / "out", Parallelism(), hf_model=reference)
    finally:
        destroy_model_parallel()
        reset_registry()
    message = str(err.value)
    assert "num_layers 4 (checkpoint: 2)" in message and "layernorm_epsilon 1e-05 (checkpoint: 1e-06)" in message
    assert not (tmp_path / "out").exists()


# -- a checkpoint crosses megatron-core versions ----------------------------------------------------
OTHER_MCORE = os.environ.get("BRIDGE_OTHER_MCORE_SITE")  # a --target folder with another megatron-core


@pytest.mark.skipif(not OTHER_MCORE, reason="set BRIDGE_OTHER_MCORE_SITE to a folder holding another megatron-core")
def test_checkpoints_cross_megatron_core_versions(bf16_toy, bf16_checkpoint, tmp_path):
    from bridge_core.testing.compare import compare_hf_weights

    other = {"PYTHONPATH": OTHER_MCORE}
    written = tmp_path / "other-version"
    proc = bridgectl_with(other, "import", "--hf-model", str(bf16_toy), "--megatron-path", str(written))
    assert proc.returncode == 0, proc.stderr
    versions = {
        json.loads((p / "run_config.json").read_text())["versions"]["megatron_core"] for p in (written, bf16_checkpoint)
    }
    assert len(versions) == 2, versions
    for checkpoint, env, out in ((written, {}, tmp_path / "a"), (bf16_checkpoint, other, tmp_path / "b")):
        proc = bridgectl_with(env, "export", "--megatron-path", str(checkpoint), "--hf-path", str(out))
        assert proc.returncode == 0, proc.stderr
        assert compare_hf_weights(bf16_toy, out) == []


def bridgectl_with(env: dict, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bridgectl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    environ.update({"BRIDGE_PLUGINS": "llama,qwen", "OMP_NUM_THREADS": "1", **env})
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=environ)
