"""The Megatron-LM checkpoint CLI with a Gemma 2 model: import at TP=2, export at PP=2, verify."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from gemma_toys import GEMMA2

from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
from bridge_core.testing.toy import ToyModel, build_toy


def bridgectl(*args: str) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="gemma")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return build_toy(ToyModel("Gemma2ForCausalLM", GEMMA2), tmp_path_factory.mktemp("gemma2") / "hf")


def test_import_export_verify(toy, tmp_path):
    ckpt = tmp_path / "megatron"
    proc = bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(ckpt), "--tp", "2")
    assert proc.returncode == 0, proc.stderr
    run = json.loads((ckpt / "run_config.json").read_text())["provider"]
    assert (run["window_size"], run["window_attn_skip_freq"], run["sandwich_norms"]) == ([7, 0], [1, 0], True)
    assert (run["attn_logit_softcap"], run["final_logit_softcap"], run["layernorm_zero_centered_gamma"]) == (
        0.5,
        3.0,
        True,
    )
    assert "activation_func" not in run  # fixed by the provider class
    proc = bridgectl("export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "out"), "--pp", "2")
    assert proc.returncode == 0, proc.stderr
    assert compare_hf_weights(toy, tmp_path / "out") == []
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (config["sliding_window"], config["final_logit_softcapping"]) == (8, 3.0)
    proc = bridgectl("verify", "--hf-model", str(toy), "--megatron-path", str(ckpt))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify: OK" in proc.stdout
