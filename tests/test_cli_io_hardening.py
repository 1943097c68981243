"""``bridgectl`` on hostile and faulty inputs and outputs (issue 12): one-line errors naming the
path or tensor, nothing left behind, no input destroyed, nothing copied from outside a folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_core.testing.toy import ToyModel, build_toy

LLAMA = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 160,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
}
DOWN = "model.layers.0.mlp.down_proj.weight"


def bridgectl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "bridgectl"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        "BRIDGE_PLUGINS": "llama,qwen",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("toy") / "hf")
    (folder / "tokenizer_config.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def checkpoint(toy, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "megatron"
    proc = bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(path))
    assert proc.returncode == 0, proc.stderr
    return path


def with_weight(toy: Path, dst: Path, name: str, edit) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(toy, dst)
    tensors = load_file(dst / "model.safetensors")
    with torch.no_grad():
        edit(tensors[name])
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_a_single_shard_export_writes_model_safetensors_and_reimports(checkpoint, toy, tmp_path):
    out = tmp_path / "hf"
    proc = bridgectl("export", "--megatron-path", str(checkpoint), "--hf-path", str(out))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "model.safetensors.index.json" not in names
    assert not any(n.startswith("model-0") for n in names) and "tokenizer_config.json" in names
    proc = bridgectl("import", "--hf-model", str(out), "--megatron-path", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr


def test_a_export_into_its_own_input_is_refused_before_anything_is_deleted(checkpoint, tmp_path):
    checkpoint = shutil.copytree(checkpoint, tmp_path / "megatron")  # the old code destroyed it
    before = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*"))
    for out in (checkpoint, checkpoint / "hf"):
        one_line_error(
            bridgectl("export", "--megatron-path", str(checkpoint), "--hf-path", str(out), "--overwrite"),
            f"{out}: --hf-path",
            f"the input {checkpoint}",
        )
    assert sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*")) == before


def test_a_import_into_the_folder_it_reads_is_refused(toy):
    before = sorted(p.name for p in toy.iterdir())
    one_line_error(
        bridgectl("import", "--hf-model", ".", "--megatron-path", ".", "--overwrite", cwd=toy),
        ".: --megatron-path is the input .",
    )
    assert sorted(p.name for p in toy.iterdir()) == before


def test_a_a_tokenizer_file_linking_outside_the_checkpoint_is_not_copied(checkpoint, tmp_path):
    ckpt = tmp_path / "megatron"
    shutil.copytree(checkpoint, ckpt, symlinks=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (ckpt / "tokenizer" / "tokenizer_config.json").unlink()
    (ckpt / "tokenizer" / "tokenizer_config.json").symlink_to(secret)
    one_line_error(
        bridgectl("export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "hf")),
        "tokenizer/tokenizer_config.json: tokenizer file links to",
        "secret.txt, outside",
        "refused",
    )
    assert not (tmp_path / "hf").exists()


def test_a_float16_import_of_a_weight_beyond_its_range_names_it(toy, tmp_path):
    folder = with_weight(toy, tmp_path / "hf", DOWN, lambda t: t.__setitem__((0, 0), 1e6))
    one_line_error(
        bridgectl(
            "import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o"), "--torch-dtype", "float16"
        ),
        f"{DOWN}: casting torch.float32 to torch.float16 overflows",
    )
    assert not (tmp_path / "o").exists()


def test_a_nan_weights_are_named_on_import(toy, tmp_path):
    folder = with_weight(toy, tmp_path / "hf", DOWN, lambda t: t.__setitem__((1, 1), float("nan")))
    proc = bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert f"1 HF tensor(s) hold NaN or Inf values, converted as they are: {DOWN}" in proc.stderr


@pytest.fixture
def tiny_mount(tmp_path):
    """A 1 MiB tmpfs (root only); skipped where mounting is not possible."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_b_import_onto_a_full_disk_or_a_read_only_one_is_one_line(toy, tiny_mount):
    out = tiny_mount / "megatron"
    proc = bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(out))
    one_line_error(proc, f"{out}: cannot write it: No space left on device")
    assert "Exception in thread" not in proc.stderr
    assert list(tiny_mount.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    one_line_error(
        bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(out)),
        f"{out}: cannot write it: Read-only file system",
    )


def test_b_export_onto_a_full_disk_is_one_line(checkpoint, tiny_mount):
    out = tiny_mount / "hf"
    one_line_error(
        bridgectl("export", "--megatron-path", str(checkpoint), "--hf-path", str(out)),
        f"{out}: cannot write it: No space left on device",
    )
    assert list(tiny_mount.iterdir()) == []


def test_c_a_checkpoint_whose_common_state_is_a_list_is_refused(checkpoint, tmp_path):
    import torch

    ckpt = tmp_path / "megatron"
    shutil.copytree(checkpoint, ckpt)
    common = next(ckpt.glob("iter_*/common.pt"), None)
    if common is None:
        pytest.skip("this megatron-core keeps the common state inside the torch_dist files")
    torch.save([1, 2], common)
    one_line_error(
        bridgectl("export", "--megatron-path", str(ckpt), "--hf-path", str(tmp_path / "hf")),
        "common.pt: the common state is a list, not a dict; refused",
    )
    assert json.loads((ckpt / "run_config.json").read_text())  # input untouched
