"""The Megatron-LM checkpoint CLI with a Phi-3 model: import at TP=2, export at PP=2, verify; refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel, build_toy

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
    "eos_token_id": 998,
    "pad_token_id": 999,
    "partial_rotary_factor": 0.5,
    "sliding_window": 8,
}


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="phi")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return build_toy(ToyModel("Phi3ForCausalLM", PHI3), tmp_path_factory.mktemp("phi3") / "hf")


def test_import_export_verify(toy, tmp_path):
    ckpt = tmp_path / "megatron"
    proc = bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(ckpt), "--tp", "2")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((ckpt / "run_config.json").read_text())["provider"]
    assert (run["window_size"], run["rotary_percent"], run["core_attention"]) == ([7, 0], 0.5, "auto")
    proc = bridgectl("export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "out"), "--pp", "2")
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(toy, tmp_path / "out") == []
    assert json.loads((tmp_path / "out" / "config.json").read_text())["sliding_window"] == 8
    proc = bridgectl("verify", "--hf-model", str(toy), "--megatron-path", str(ckpt))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: OK" in proc.stdout


def test_longrope_is_a_one_line_error(toy, tmp_path):
    config = json.loads((toy / "config.json").read_text())
    config["rope_parameters"] = {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.5,
        "short_factor": [1.0] * 4,
        "long_factor": [2.0] * 4,
    }
    config["original_max_position_embeddings"] = 256
    folder = tmp_path / "longrope"
    folder.mkdir()
    for f in toy.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    proc = bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "rope_scaling.type=longrope" in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()
