"""``bridgectl plan`` on a config-only folder of the real Llama-3.1-70B (no weights anywhere)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("megatron.core")

from bridge_core.testing.launch import run_bridgectl

LLAMA31_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def config_only(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama31-70b")
    (folder / "config.json").write_text(json.dumps(LLAMA31_70B))
    return folder


def test_plan_prints_every_rank_of_the_layout(config_only):
    proc = run_bridgectl("plan", "--hf-model", str(config_only), "--tp", "8", "--pp", "2", "--json", plugins="llama")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["parallel"] == {"tp": 8, "pp": 2, "ep": 1, "etp": 8}
    assert len(doc["ranks"]) == 16 and round(doc["total_params"] / 1e9, 2) == 70.55
    assert {r["params"] for r in doc["ranks"]} == {4_410_966_016, 4_410_974_208}  # first stage, last stage
    text = run_bridgectl("plan", "--hf-model", str(config_only), "--tp", "8", "--pp", "2", plugins="llama")
    assert text.returncode == 0 and "the busiest rank (tp 0, pp 1, ep 0) holds 8.22 GiB" in text.stdout


def test_a_layout_that_does_not_fit_is_one_line(config_only):
    proc = run_bridgectl("plan", "--hf-model", str(config_only), "--pp", "3", plugins="llama")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "bridgectl plan: error: --pp 3 does not divide the model's 80 layers"
