"""Shared by bridge-olmo's tests: Megatron logits with settings or module patches, HF greedy output, torchrun."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from bridge_core import AutoBridge
from bridge_core.runtime.inference import forward_logits
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.compare import max_abs_diff
from bridge_core.testing.launch import torchrun
from bridge_core.testing.toy import hf_logits, sample_ids

HERE = Path(__file__).parent
VOCAB = 1000


def logits_diff(folder: Path, patch: Callable | None = None, **settings) -> float:
    """Max |Δ| between transformers' logits and the Megatron model's at TP=1 (``patch(model)`` applied)."""
    bridge = AutoBridge.from_hf_pretrained(folder)
    provider = bridge.to_megatron_provider()
    for key, value in settings.items():
        setattr(provider, key, value)
    provider.finalize()
    ids = sample_ids(VOCAB, seq=32)
    try:
        model = provider.provide_distributed_model(wrap_with_ddp=False)
        bridge.load_hf_weights(model)
        if patch is not None:
            patch(model[0])
        return max_abs_diff(forward_logits(model, ids, vocab_size=VOCAB), hf_logits(folder, ids))
    finally:
        destroy_model_parallel()


def prompt() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(3))


def hf_greedy(folder: Path, ids: torch.Tensor, new: int) -> tuple[torch.Tensor, object]:
    """transformers' ``generate(do_sample=False)`` and the eos id(s) it stops at."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = hf.generate(ids, do_sample=False, max_new_tokens=new)
    assert expected.shape[1] == ids.shape[1] + new  # the toy does not stop early at this prompt
    return expected, hf.generation_config.eos_token_id


def launch(folder: Path, cases: list[dict], work: Path, new: int, eos: object) -> dict:
    """Run ``_olmo_dist.py`` on 2 CPU ranks for ``cases``; returns its results (errors fail here)."""
    spec = {
        "hf_path": str(folder),
        "ids": prompt()[0].tolist(),
        "max_new_tokens": new,
        "eos_token_id": eos,
        "vocab_size": VOCAB,
        "out": str(work / "results.json"),
        "cases": cases,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "BRIDGE_PLUGINS": "olmo"}
    proc = torchrun([str(HERE / "_olmo_dist.py"), str(work / "spec.json")], 2, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((work / "results.json").read_text())
    for name, got in results.items():
        assert "error" not in got, f"{name}: {got['error'][-3000:]}"
    return results


_FUSED: dict[Path, Path] = {}


def fused_copy(folder: Path, mktemp) -> Path:
    """``folder`` re-saved with stacked experts (``mlp.experts.gate_up_proj`` ...), once per session."""
    if folder not in _FUSED:
        from transformers import AutoModelForCausalLM

        out = mktemp("fused") / "hf"
        AutoModelForCausalLM.from_pretrained(folder, dtype="auto").save_pretrained(out, save_original_format=False)
        _FUSED[folder] = out
    return _FUSED[folder]
