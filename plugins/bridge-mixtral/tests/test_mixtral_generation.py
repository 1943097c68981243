"""Greedy generation through bridge-mixtral equals transformers' ``generate`` on the same weights: in
process at TP=1 (KV cache and recomputation) for both HF expert layouts, then EP=2, TP=2 with expert
TP=1 and PP=2 in one torchrun launch on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _mixtral_layouts import fused_copy
from bridge_core import AutoBridge
from bridge_core.runtime.generation import greedy_generate
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.launch import torchrun
from bridge_core.testing.toy import ToyModel
from test_mixtral_features import TOY

HERE = Path(__file__).parent
NEW = 16


def hf_greedy(folder: Path, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
    """transformers' ``generate(do_sample=False)`` and the eos id(s) it stops at."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=NEW)
    assert expected.shape[1] == ids.shape[1] + NEW  # the toy does not stop early at this prompt
    return expected, hf.generation_config.eos_token_id


def prompt() -> torch.Tensor:
    return torch.randint(0, 1000, (1, 10), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("layout", ["per_expert", "fused"])
def test_greedy_generation_equals_transformers(toy_model_factory, tmp_path_factory, layout):
    folder = toy_model_factory(ToyModel("MixtralForCausalLM", TOY))
    if layout == "fused":
        folder = fused_copy(folder, tmp_path_factory.mktemp)
    ids = prompt()
    expected, eos = hf_greedy(folder, ids)
    provider = AutoBridge.from_hf_pretrained(folder).to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos), expected)
        assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos, use_cache=False), expected)
    finally:
        destroy_model_parallel()


def test_ep2_tp2_pp2_in_one_launch(toy_model_factory, tmp_path):
    folder = toy_model_factory(ToyModel("MixtralForCausalLM", TOY))
    ids = prompt()
    expected, eos = hf_greedy(folder, ids)
    cases = [
        {"name": "ep2", "ep": 2},
        {"name": "tp2-etp1", "tp": 2, "etp": 1},
        {"name": "pp2", "pp": 2},
    ]
    spec = {
        "hf_path": str(folder),
        "ids": ids[0].tolist(),
        "max_new_tokens": NEW,
        "eos_token_id": eos,
        "out": str(tmp_path / "results.json"),
        "cases": cases,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "BRIDGE_PLUGINS": "mixtral"}
    proc = torchrun([str(HERE / "_mixtral_generation_dist.py"), str(tmp_path / "spec.json")], 2, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    want = expected[0].tolist()
    for case in cases:
        got = results[case["name"]]
        assert "error" not in got, got
        assert got == [want, want], case["name"]  # every rank holds transformers' tokens
