"""LoRA from the command line, as a user runs it: ``bridgectl train --recipe smollm2_135m_peft`` on a Llama toy,
``bridgectl peft export`` (an adapter ``peft`` loads: logits within 1e-4 of Megatron's), ``peft merge``,
and the one-line refusals (no base; ``export`` of an adapters-only checkpoint)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import peft  # noqa: E402,F401  (tox installs it: a missing peft must fail, not skip)

pytest.importorskip("megatron.core.datasets.helpers_cpp")

from bridge_core.testing.compare import max_abs_diff  # noqa: E402
from bridge_core.testing.launch import run_bridgectl  # noqa: E402
from bridge_core.testing.peft import PEFT_IDS, megatron_peft_logits, peft_logits  # noqa: E402
from bridge_core.testing.toy import ToyModel, build_toy  # noqa: E402
from bridge_core.testing.toys import TINY_LLAMA  # noqa: E402

TRAIN = [
    "peft.rank=4",
    "peft.alpha=8",
    "data.kind=mock",
    "train.iters=3",
    "train.global_batch_size=2",
    "train.micro_batch_size=1",
    "train.seq_length=32",
    "train.eval_interval=none",
    "optimizer.lr=1e-2",
    "scheduler.lr_warmup_iters=0",
    "precision.dtype=fp32",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("peft-cli")
    hf = build_toy(ToyModel("LlamaForCausalLM", TINY_LLAMA), work / "hf")
    run = work / "run"
    proc = run_bridgectl(
        "train", "--recipe", "smollm2_135m_peft", "--hf-model", str(hf), *TRAIN, f"checkpoint.save={run}",
        plugins="llama",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, hf, run


def test_peft_export_and_merge_from_the_command_line(trained):
    from transformers import AutoModelForCausalLM

    work, hf, run = trained
    adapter, merged = work / "adapter", work / "merged"
    for action, out in (("export", adapter), ("merge", merged)):
        proc = run_bridgectl("peft", action, "--megatron-path", str(run), "--hf-path", str(out), plugins="llama")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"peft {action}: wrote" in proc.stdout
    ours = megatron_peft_logits(hf, run, PEFT_IDS)
    theirs, base = peft_logits(hf, adapter, PEFT_IDS)
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(PEFT_IDS).logits
    assert max_abs_diff(ours, theirs) < 1e-4 and max_abs_diff(ours, merged_logits) < 1e-4
    assert max_abs_diff(ours, base) > 1e-3


def test_refusals_are_one_line(trained, tmp_path):
    work, hf, run = trained
    cases = [
        (("train", "--recipe", "smollm2_135m_peft", f"checkpoint.save={tmp_path / 'x'}"), "trains an existing model"),
        (("export", "--megatron-path", str(run), "--hf-path", str(tmp_path / "e")), "holds PEFT adapters only"),
        (("peft", "export", "--megatron-path", str(hf), "--hf-path", str(tmp_path / "p")), "not a Megatron-LM"),
    ]
    for args, message in cases:
        proc = run_bridgectl(*args, plugins="llama")
        assert proc.returncode != 0, args
        last = proc.stderr.strip().splitlines()[-1]
        assert message in last and last.startswith("bridgectl "), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()
