"""The conversion plan of the real GPT-OSS-120B config at TP=1 EP=8 (no weights): what each rank holds
and reads, checked against the arithmetic of the config, and coverage of the released MXFP4 checkpoint's
every tensor and expert slice over the 8 ranks (``_gpt_oss_plan.py``, one process, about 15 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def test_gpt_oss_120b_plan_at_ep8_bytes_per_rank():
    from bridge_gpt_oss.recipes import MODELS

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a meta-device plan: megatron-core moves weights to a visible GPU
    script = [sys.executable, str(HERE / "_gpt_oss_plan.py")]
    proc = subprocess.run(script, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    c = MODELS["gpt_oss_120b"][1]
    h, i, layers, experts, vocab = (
        c["hidden_size"],
        c["intermediate_size"],
        c["num_hidden_layers"],
        c["num_local_experts"],
        c["vocab_size"],
    )
    qkv = (c["num_attention_heads"] + 2 * c["num_key_value_heads"]) * c["head_dim"]
    o = c["num_attention_heads"] * c["head_dim"]
    per_layer = 2 * h + qkv * (h + 1) + o * h + h + c["num_attention_heads"] + experts * (h + 1)
    dense = 2 * vocab * h + h + layers * per_layer
    expert = 2 * i * (h + 1) + i * h + h
    local = experts // 8
    mxfp4_expert = (2 * i * h + h * i) // 2 + (2 * i * h + h * i) // 32 + 2 * (2 * i + h)  # blocks, scales, bf16 biases

    assert report["hf_bytes"] == 2 * dense + layers * experts * mxfp4_expert  # the released checkpoint (~65 GB)
    assert len(report["ranks"]) == 8
    for row in report["ranks"]:
        assert row["params"] == dense + layers * local * expert, row  # 16.47e9 at EP=8
        norms = (2 * layers + 1) * h  # torch's norms on the local spec keep fp32 weights
        assert row["held_bytes"] == 2 * row["params"] + 2 * norms, row  # bf16: 32.9 GB per rank
        assert row["read_bytes"] == 2 * dense + layers * local * mxfp4_expert, row  # 11.9 GB per rank
