"""The trainer on CPU at world size 1: a toy learns, checkpoints resume bit-exactly, export matches.

One 20-step run (module fixture) is the reference that the resume tests continue from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
# megatron-core's GPT datasets need its compiled helpers (absent when a cp312 wheel runs on Python 3.11)
pytest.importorskip("megatron.core.datasets.helpers_cpp")

import _training_plugin  # noqa: E402
from torch.distributed.checkpoint import FileSystemReader  # noqa: E402

from bridge_core.errors import CheckpointError, ConfigError  # noqa: E402
from bridge_core.plugins.discovery import reset_registry  # noqa: E402
from bridge_core.runtime.parallel import destroy_model_parallel  # noqa: E402
from bridge_core.testing.compare import max_abs_diff  # noqa: E402
from bridge_core.training import checkpoint as ckpt  # noqa: E402
from bridge_core.training.recipe import load_recipe  # noqa: E402
from bridge_core.training.trainer import train  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def plugin():
    _training_plugin.use()
    yield
    reset_registry()


def run(overrides, name="toy_pretrain", **kwargs):
    try:
        return train(load_recipe(name).with_overrides(overrides), **kwargs)
    finally:
        destroy_model_parallel()


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def interrupted_copy(source: Path, target: Path, at: int) -> Path:
    """``source`` as a run killed after its checkpoint ``at`` (later iterations gone)."""
    shutil.copytree(source, target)
    for folder in target.glob("iter_*"):
        if int(folder.name[5:]) > at:
            shutil.rmtree(folder)
    (target / "latest_checkpointed_iteration.txt").write_text(str(at))
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """20 steps with the distributed optimizer, a checkpoint every 5, the last 2 kept."""
    save = tmp_path_factory.mktemp("reference") / "run"
    with count_sdpa_calls() as calls:
        result = run([f"checkpoint.save={save}", "checkpoint.keep_last_n=2"])
    assert calls, "attention.core_attention=auto did not run SDPACoreAttention on CPU"
    return save, result.losses


@contextlib.contextmanager
def count_sdpa_calls():
    from bridge_core.modeling.attention import SDPACoreAttention

    calls, forward = [], SDPACoreAttention.forward
    SDPACoreAttention.forward = lambda self, *a, **k: calls.append(1) or forward(self, *a, **k)
    try:
        yield calls
    finally:
        SDPACoreAttention.forward = forward


def test_toy_trains_20_steps_with_falling_loss_metrics_and_checkpoints(reference):
    save, losses = reference
    assert sorted(losses) == list(range(1, 21))
    assert sum(losses[i] for i in range(16, 21)) / 5 < losses[1] - 0.5, losses
    rows = records(save)
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert [r["loss"] for r in rows] == [losses[i] for i in range(1, 21)]
    for key in ("grad_norm", "tokens_per_s", "peak_memory_gib"):
        assert all(isinstance(r[key], float) and r[key] > 0 for r in rows), key
    # TOY by hand (Megatron-LM's convention): h 64, FFN 128 (gated), 4 heads of 16, 2 KV groups, V 256, seq 64
    layer = 2 * 64 * (4 + 2 * 2) * 16 + 2 * 64 * 64 + 2 * 3 * 64 * 128 + 2 * 2 * 4 * 16 * (64 / 2)
    per_token = 3 * (2 * layer + 2 * 64 * 256)  # forward, data and weight gradients; world size 1
    for r in rows:
        assert r["tflops_per_gpu"] > 0
        assert r["tflops_per_gpu"] == pytest.approx(r["tokens_per_s"] * per_token / 1 / 1e12, rel=1e-12)
    # Megatron's linear warmup from 0 over 2 steps, then cosine down to min_lr at step 20
    assert [r["lr"] for r in rows[:3]] == pytest.approx([0.0, 1.5e-3, 3e-3])
    assert rows[-1]["lr"] < rows[10]["lr"] < rows[3]["lr"] and rows[-1]["lr"] >= 3e-4
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000015", "iter_0000020"]  # keep_last_n=2
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "20"
    saved = json.loads((save / "iter_0000020" / ckpt.TRAINING_CONFIG).read_text())
    assert saved["iteration"] == 20 and saved["consumed_train_samples"] == 160
    assert saved["recipe"]["name"] == "toy_pretrain" and saved["recipe"]["config"]["train"]["iters"] == 20
    assert saved["recipe"]["config"]["attention"]["core_attention"] == "sdpa"  # auto, without Transformer Engine
    run_config = json.loads((save / "run_config.json").read_text())
    assert run_config["provider"]["num_layers"] == 2 and run_config["run"]["iteration"] == 20
    assert not list(save.parent.glob(".*partial*"))


def test_local_core_attention_gives_the_sdpa_losses(reference, capsys):
    _, sdpa = reference  # attention.core_attention=auto: SDPA on CPU
    overrides = ["train.iters=6", "scheduler.lr_decay_iters=20", "attention.core_attention=local"]
    with count_sdpa_calls() as calls:
        local = run(overrides).losses
    assert not calls  # megatron-core's DotProductAttention ran
    assert "train: core attention local" in capsys.readouterr().out
    worst = max(abs(local[i] - sdpa[i]) for i in local)
    print(f"local vs SDPA core attention: max |loss difference| over 6 steps = {worst:.2e}")
    assert sorted(local) == list(range(1, 7)) and worst < 1e-5


def test_sdpa_refuses_what_it_cannot_serve_in_one_line():
    with pytest.raises(ConfigError, match=r"attention.core_attention=sdpa: softmax_type='learnable' is not supported"):
        run(["attention.core_attention=sdpa", "model.softmax_type=learnable"])


def test_resume_with_distributed_optimizer_gives_the_same_losses_bit_for_bit(reference, tmp_path):
    save, losses = reference
    resumed = interrupted_copy(save, tmp_path / "run", at=15)
    result = run([f"checkpoint.save={resumed}"])
    assert result.losses == {i: losses[i] for i in range(16, 21)}
    assert [r["loss"] for r in records(resumed)] == [losses[i] for i in range(1, 21)]  # killed run's tail replaced


def test_resume_with_plain_optimizer_is_bit_exact(tmp_path):
    common = ["optimizer.use_distributed_optimizer=false", "train.iters=8", "checkpoint.save_interval=4"]
    full = run([*common, f"checkpoint.save={tmp_path / 'full'}"]).losses
    resumed = interrupted_copy(tmp_path / "full", tmp_path / "resumed", at=4)
    assert run([*common, f"checkpoint.save={resumed}"]).losses == {i: full[i] for i in range(5, 9)}


def test_bf16_with_plain_optimizer_resumes_bit_exact(tmp_path):
    """bf16 as on a GPU: every parameter bf16 (norms too), so the plain optimizer's state saves."""
    common = ["precision.dtype=bf16", "optimizer.use_distributed_optimizer=false", "train.iters=6"]
    common += ["checkpoint.save_interval=3"]
    full = run([*common, f"checkpoint.save={tmp_path / 'full'}"]).losses
    metadata = FileSystemReader(tmp_path / "full" / "iter_0000006").read_metadata().state_dict_metadata
    weights = {k: m.properties.dtype for k, m in metadata.items() if k.endswith("norm.weight") and "optimizer" not in k}
    assert weights and set(weights.values()) == {torch.bfloat16}, weights
    resumed = interrupted_copy(tmp_path / "full", tmp_path / "resumed", at=3)
    assert run([*common, f"checkpoint.save={resumed}"]).losses == {i: full[i] for i in range(4, 7)}


def test_a_silent_adam_step_reset_is_refused(reference, tmp_path, monkeypatch):
    """megatron-core's own load (without the workaround) puts Adam's step back to 0: that must not pass."""
    save, _ = reference
    resumed = interrupted_copy(save, tmp_path / "run", at=15)

    def plain_load(optimizer, loaded, dist_opts):
        with torch.no_grad():
            optimizer.load_state_dict(loaded)

    monkeypatch.setattr(ckpt, "_load_optimizer", plain_load)
    with pytest.raises(CheckpointError, match=r"Adam step is \[0.0\] but the checkpoint is at iteration 15"):
        run([f"checkpoint.save={resumed}"])


def test_import_train_export_logits_equal_the_trained_megatron_model(tmp_path):
    from bridge_core.conversion.workflows import export_checkpoint, import_checkpoint, load_checkpoint
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallelism import Parallelism
    from bridge_core.testing.toy import ToyModel, build_toy, hf_logits, sample_ids

    hf = build_toy(ToyModel("LlamaForCausalLM", _training_plugin.TOY), tmp_path / "hf")
    try:
        import_checkpoint(hf, tmp_path / "imported", Parallelism())
    finally:
        destroy_model_parallel()
    save = tmp_path / "trained"
    overrides = [f"checkpoint.save={save}", "train.iters=3", "scheduler.lr_warmup_iters=1", "data.kind=mock"]
    run(overrides, name="toy_sft", megatron_path=tmp_path / "imported")
    try:
        export_checkpoint(save, tmp_path / "exported", Parallelism())
        destroy_model_parallel()
        ids = sample_ids(256, batch=2, seq=32)
        trained = load_checkpoint(save, Parallelism())
        megatron = forward_logits(trained.model, ids, vocab_size=256)
    finally:
        destroy_model_parallel()
    exported, original = hf_logits(tmp_path / "exported", ids), hf_logits(hf, ids)
    assert max_abs_diff(megatron, exported) < 1e-4
    assert max_abs_diff(exported, original) > 1e-2  # the training changed the model


def test_a_model_trained_from_scratch_exports_to_hf_with_the_same_logits(reference, tmp_path):
    from bridge_core.conversion.workflows import export_checkpoint, load_checkpoint
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallelism import Parallelism
    from bridge_core.testing.toy import hf_logits, sample_ids

    save, _ = reference
    try:
        export_checkpoint(save, tmp_path / "hf", Parallelism())
        destroy_model_parallel()
        ids = sample_ids(256, batch=2, seq=32)
        megatron = forward_logits(load_checkpoint(save, Parallelism()).model, ids, vocab_size=256)
    finally:
        destroy_model_parallel()
    assert max_abs_diff(megatron, hf_logits(tmp_path / "hf", ids)) < 1e-4


def test_a_save_folder_that_holds_something_else_is_refused_before_building(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="the folder is not empty and holds no training run"):
        run([f"checkpoint.save={folder}"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
