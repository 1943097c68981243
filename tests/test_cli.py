"""``bridgectl`` conversion commands end to end, and every bad input the issue lists.

Each bad input must give one line on stderr naming the file or setting, a non-zero exit, no
traceback (unless --debug), and no output that looks complete.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.launch import run_bridgectl
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


def bridgectl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_bridgectl(*args, plugins="llama,qwen", cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
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
    proc = bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(path), "--tp", "2", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    return path


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def with_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of ``src`` whose config.json has ``changes`` (a value of None deletes the key)."""
    folder = copy(src, dst)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


def test_import_writes_a_megatron_lm_checkpoint(checkpoint, toy):
    assert (checkpoint / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
    files = {p.name for p in (checkpoint / "iter_0000000").iterdir()}
    assert {".metadata", "metadata.json", "__0_0.distcp", "__1_0.distcp"} <= files
    provenance = json.loads((checkpoint / "provenance.json").read_text())
    assert provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["plugin"]["distribution"] == "bridge-llama"
    assert provenance["source"] == str(toy)
    assert {"bridge_core", "contract", "transformers", "megatron_core"} <= set(provenance)
    run = json.loads((checkpoint / "run_config.json").read_text())
    assert run["provider"]["num_layers"] == 2 and run["provider"]["tensor_model_parallel_size"] == 2
    assert (checkpoint / "tokenizer" / "tokenizer_config.json").exists()


def test_export_at_another_parallelism_without_reference_is_bit_exact(checkpoint, toy, tmp_path):
    proc = bridgectl("export", "--megatron-path", str(checkpoint), "--hf-path", str(tmp_path / "out"), "--pp", "2")
    assert proc.returncode == 0, proc.stderr
    assert "export: wrote 21 HF tensors" in proc.stderr + proc.stdout
    assert compare_hf_weights(toy, tmp_path / "out") == []
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    assert (tmp_path / "out" / "generation_config.json").exists()


def test_verify_reports_logits_and_tensors(checkpoint, toy):
    proc = bridgectl("verify", "--hf-model", str(toy), "--megatron-path", str(checkpoint))
    assert proc.returncode == 0, proc.stderr
    assert "verify: tensors: 21/21 bit-identical" in proc.stdout
    assert "verify: OK" in proc.stdout


def test_verify_fails_on_a_different_model(checkpoint, tmp_path):
    other = build_toy(ToyModel("LlamaForCausalLM", LLAMA, seed=7), tmp_path / "other")
    proc = bridgectl("verify", "--hf-model", str(other), "--megatron-path", str(checkpoint))
    assert proc.returncode == 1
    assert "verify: MISMATCH" in proc.stdout
    assert "tensors: 0/21 bit-identical" in proc.stdout


def test_roundtrip_command(toy):
    proc = bridgectl("roundtrip", "--hf-model", str(toy), "--pp", "2")
    assert proc.returncode == 0, proc.stderr
    assert "roundtrip: HF -> Megatron -> HF: bit-identical" in proc.stdout


# -- bad input -------------------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(tmp_path / "nope"), "--megatron-path", str(tmp_path / "o")),
        "nope: no such file or folder",
    )
    assert not (tmp_path / "o").exists()


def test_folder_without_config(tmp_path):
    (tmp_path / "hf").mkdir()
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(tmp_path / "hf"), "--megatron-path", str(tmp_path / "o")),
        "config.json: missing",
    )


def test_folder_without_weights(toy, tmp_path):
    folder = copy(toy, tmp_path / "hf")
    (folder / "model.safetensors").unlink()
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "no *.safetensors weights",
    )
    assert not (tmp_path / "o").exists()


def test_config_without_architectures(toy, tmp_path):
    folder = with_config(toy, tmp_path / "hf", architectures=None)
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "config.json: no 'architectures' entry",
    )


def test_unknown_architecture_names_the_plugin(toy, tmp_path):
    folder = with_config(toy, tmp_path / "hf", architectures=["NemotronHForCausalLM"])
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "NemotronHForCausalLM: no plugin for it is published yet (write one with 'bridgectl new-plugin')",
    )


def test_corrupt_safetensors(toy, tmp_path):
    folder = copy(toy, tmp_path / "hf")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "model.safetensors: corrupt safetensors file",
    )
    assert not (tmp_path / "o").exists()


def test_truncated_safetensors(toy, tmp_path):
    folder = copy(toy, tmp_path / "hf")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "model.safetensors: truncated safetensors file",
    )
    assert not (tmp_path / "o").exists()


def test_index_pointing_outside_the_folder_is_refused(toy, tmp_path):
    folder = copy(toy, tmp_path / "hf")
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    index = {"metadata": {}, "weight_map": {k: "../secret.safetensors" for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "model.safetensors.index.json: shard name '../secret.safetensors'",
        "refused",
    )


def test_shape_mismatch(toy, tmp_path):
    folder = with_config(toy, tmp_path / "hf", intermediate_size=128)
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "shape mismatch",
        "decoder.layers.0.mlp.linear_fc1.weight",
    )
    assert not (tmp_path / "o").exists()


def test_tensor_parallel_not_dividing_heads(tmp_path):
    folder = build_toy(
        ToyModel("LlamaForCausalLM", {**LLAMA, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 72}),
        tmp_path / "hf",
    )
    line = assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o"), "--tp", "2"),
        "tensor parallel size 2",
    )
    assert "valid sizes: 1, 3" in line
    assert not (tmp_path / "o").exists()


def test_existing_output_folder_is_refused_unless_overwrite(toy, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("x")
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(out)),
        "exists and is not empty; pass --overwrite",
    )
    assert (out / "keep").exists()
    assert bridgectl("import", "--hf-model", str(toy), "--megatron-path", str(out), "--overwrite").returncode == 0
    assert not (out / "keep").exists() and (out / "latest_checkpointed_iteration.txt").exists()


def test_checkpoint_without_tracker_file(checkpoint, tmp_path):
    broken = copy(checkpoint, tmp_path / "ckpt")
    (broken / "latest_checkpointed_iteration.txt").unlink()
    assert_one_line_error(
        bridgectl("export", "--megatron-path", str(broken), "--hf-path", str(tmp_path / "o")),
        "latest_checkpointed_iteration.txt: missing",
    )
    assert not (tmp_path / "o").exists()


def test_bad_max_shard_size_is_refused_before_any_rank_starts(checkpoint, tmp_path, monkeypatch):
    out, scratch = tmp_path / "o", tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where the launcher would keep its rank logs
    args = ["--megatron-path", str(checkpoint), "--hf-path", str(out), "--tp", "2", "--max-shard-size", "5XB"]
    line = assert_one_line_error(bridgectl("export", *args), "max shard size '5XB' is not a size")
    assert line.startswith("bridgectl export: error:") and not out.exists()
    assert not any(scratch.iterdir())  # no rank was started


def test_debug_shows_the_traceback(tmp_path):
    proc = bridgectl("import", "--debug", "--hf-model", str(tmp_path / "nope"), "--megatron-path", str(tmp_path / "o"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_remote_code_needs_the_flag(toy, tmp_path):
    folder = with_config(toy, tmp_path / "hf", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    assert_one_line_error(
        bridgectl("import", "--hf-model", str(folder), "--megatron-path", str(tmp_path / "o")),
        "needs remote code",
        "--trust-remote-code",
    )
