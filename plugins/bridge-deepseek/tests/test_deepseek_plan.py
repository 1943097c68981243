"""The conversion plan of the real DeepSeek-V3 (its published config, no weights) at TP=1 PP=16 EP=8.

``_deepseek_plan.py`` builds every pipeline stage's model chunk on the meta device under a fake
128-rank process group and binds every parameter to a mapping with the core's planner; here the
layout and the bytes each rank holds and reads are checked against hand arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

H, HEADS, EXPERTS, EP = 7168, 128, 256, 8
MLA = (
    H * 1536
    + 1536
    + 1536 * HEADS * (128 + 64)  # q down, q norm, q up
    + H * (512 + 64)
    + 512
    + 512 * HEADS * (128 + 128)  # kv down (with the rope key), kv norm, kv up
    + HEADS * 128 * H  # output projection
)
ROUTER = EXPERTS * H + EXPERTS  # weight and expert bias (fp32)
EXPERT = 3 * H * 2048
SHARED = 3 * H * 2048
MOE_LAYER_PER_EP_RANK = MLA + 2 * H + ROUTER + EXPERTS // EP * EXPERT + SHARED
NORMS_PER_MOE_LAYER = 2 * H + 1536 + 512  # torch norms keep fp32 weights
PUBLISHED_COUNT = 671_026_404_352  # transformers' meta model of the same config (test_deepseek_recipes)
MTP = MLA + 2 * H + ROUTER + EXPERTS * EXPERT + SHARED + 2 * H * H + 3 * H  # + eh_proj, enorm, hnorm, final norm


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    script = Path(__file__).with_name("_deepseek_plan.py")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a meta-device plan: megatron-core moves weights to a visible GPU
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def layers(probe: dict) -> list[int]:
    return sorted({int(n.split(".")[2]) for n in probe["params"] if n.startswith("decoder.layers.")})


def test_stages_hold_4_then_14_x_4_then_1_layer_and_the_mtp_block(probes):
    stages = {p["pp_rank"]: p for p in probes if p["ep_rank"] == 0}
    assert sorted(stages) == list(range(16))
    assert layers(stages[0]) == [0, 1, 2, 3] and "embedding.word_embeddings.weight" in stages[0]["params"]
    for s in range(1, 15):
        assert layers(stages[s]) == list(range(4 * s, 4 * s + 4))
    last = stages[15]
    assert layers(last) == [60] and "output_layer.weight" in last["params"]
    assert any(n.startswith("mtp.layers.0.") and ".mlp.experts." in n for n in last["params"])
    assert "model.layers.61.eh_proj.weight" in last["hf_tensors"]
    # megatron-core's MTP stage keeps a duplicate of the embedding: read again, exported once (by stage 0)
    assert last["tied_copies"] == ["embedding.word_embeddings.weight"]


def test_expert_parallel_ranks_hold_their_32_experts(probes):
    (rank7,) = [p for p in probes if p["ep_rank"] == 7]
    experts = {int(n.split(".")[6]) for n in rank7["params"] if ".local_experts." in n}
    assert experts == set(range(224, 256))
    assert "model.layers.4.mlp.experts.224.gate_proj.weight" in rank7["hf_tensors"]


def test_a_middle_stage_holds_and_reads_what_hand_arithmetic_says(probes):
    (middle,) = [p for p in probes if p["pp_rank"] == 7 and p["ep_rank"] == 0]
    numel = 4 * MOE_LAYER_PER_EP_RANK
    assert sum(middle["params"].values()) == numel == 6_569_133_056
    assert middle["held_bytes"] == 2 * numel + 2 * 4 * (ROUTER + NORMS_PER_MOE_LAYER)  # 13.15 GB
    assert middle["read_bytes"] == 2 * numel  # the HF tensors in bf16 (an FP8 source is about half)


def test_all_ranks_together_hold_the_whole_model_once(probes):
    stages = [p for p in probes if p["ep_rank"] == 0]
    total = sum(n * (EP if ".local_experts." in name else 1) for p in stages for name, n in p["params"].items())
    # + the expert bias (a parameter here, a buffer in transformers) of 58 MoE layers, + the MTP layer
    assert total == PUBLISHED_COUNT + 58 * EXPERTS + MTP
