"""The full-width QK-norm: equal to HF's norm over the whole projection, and under TP=2 (each rank half
the heads) equal to the one-process norm in its output and in both gradients (training needs the
sum of squares' gradient summed across ranks, which ``torch.distributed.nn``'s all-reduce gives)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from bridge_core.testing.launch import torchrun

from bridge_olmo.modeling_olmo.norms import FullWidthQKNorm

HERE = Path(__file__).parent


def test_equals_hf_norm_over_the_whole_projection():
    from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

    x = torch.randn(5, 2, 4, 8, generator=torch.Generator().manual_seed(0))
    hf = Olmo2RMSNorm(32, eps=1e-6)
    hf.weight.data.normal_(1.0, 0.1)
    ours = FullWidthQKNorm(4, 4, 8, 1e-6, None)
    ours.weight.data.copy_(hf.weight.data)
    assert torch.allclose(ours(x), hf(x.reshape(5, 2, 32)).view(5, 2, 4, 8), atol=1e-6, rtol=0)


def test_tp2_forward_and_gradients_equal_one_process(tmp_path):
    out = tmp_path / "diffs.json"
    proc = torchrun([str(HERE / "_olmo_norm_grad_dist.py"), str(out)], 2, timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-4000:]
    diffs = json.loads(out.read_text())
    assert max(diffs.values()) <= 1e-5, diffs
