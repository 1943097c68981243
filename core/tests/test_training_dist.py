"""DP=2 and TP=2 on 2 CPU ranks follow the world-1 loss curve (fp32); DP=2 resumes bit-exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")

import _training_plugin  # noqa: E402

from bridge_core.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.registry import reset_registry  # noqa: E402
from bridge_core.testing.launch import torchrun  # noqa: E402
from bridge_core.training.recipe import load_recipe  # noqa: E402
from bridge_core.training.trainer import train  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    work = tmp_path_factory.mktemp("dist")
    proc = torchrun([str(HERE / "_training_dist_script.py"), str(work)], nproc=2, timeout=600)
    file = work / "results.json"
    assert file.exists(), f"torchrun exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = json.loads(file.read_text())
    for case in out.values():
        case["losses"] = {int(k): v for k, v in case["losses"].items()}
    return out


@pytest.fixture(scope="module")
def world1(tmp_path_factory):
    _training_plugin.use()
    try:
        save = tmp_path_factory.mktemp("world1") / "run"
        overrides = ["train.iters=8", "checkpoint.save_interval=4", f"checkpoint.save={save}"]
        return train(load_recipe("toy_pretrain").with_overrides(overrides)).losses
    finally:
        destroy_model_parallel()
        reset_registry()


@pytest.mark.parametrize("case", ["dp2", "tp2"])
def test_parallel_loss_curve_equals_world_size_1(results, world1, case):
    got = results[case]
    assert got["error"] is None, got["error"]
    assert sorted(got["losses"]) == list(range(1, 9))
    assert world1[8] < world1[1] - 0.3  # it learns
    worst = max(abs(got["losses"][i] - world1[i]) for i in world1)
    assert worst < 1e-5, (got["losses"], world1)


def test_dp2_distributed_optimizer_resume_is_bit_exact(results):
    full, resumed = results["dp2"], results["dp2_resumed"]
    assert resumed["error"] is None, resumed["error"]
    assert resumed["losses"] == {i: full["losses"][i] for i in range(5, 9)}
