"""Hostile and faulty inputs and outputs (issue 12): nothing mis-shaped, dropped, read from outside,
silently cast to inf, or left half-written; every refusal is one ``BridgeError`` naming the culprit."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import _test_bridges
import pytest
import torch
from safetensors.torch import load_file, save_file

from bridge_core import AutoBridge
from bridge_core.checkpoints.hf_checkpoint import HFCheckpoint
from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter
from bridge_core.checkpoints.output_dir import atomic_output_dir
from bridge_core.checkpoints.safetensors_io import INDEX_NAME, SINGLE_NAME, SafetensorsCheckpoint
from bridge_core.errors import CheckpointError, ConfigError, CoverageError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel, build_toy

LLAMA = {
    "model_type": "llama",
    "hidden_size": 96,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
    "num_hidden_layers": 1,
    "intermediate_size": 160,
    "vocab_size": 300,
    "max_position_embeddings": 256,
}
K = "model.layers.0.self_attn.k_proj.weight"
DOWN = "model.layers.0.mlp.down_proj.weight"


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("llama"))


def edited(src: Path, dst: Path, **changes: torch.Tensor) -> Path:
    """A copy of the HF folder ``src`` whose weights have ``changes`` (name -> new tensor)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != SINGLE_NAME:
            (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / SINGLE_NAME)
    tensors.update(changes)
    save_file(tensors, str(dst / SINGLE_NAME), metadata={"format": "pt"})
    return dst


def convert(path: Path, dtype: str | None = None):
    bridge = AutoBridge.from_hf_pretrained(path, torch_dtype=dtype)
    provider = bridge.to_megatron_provider()
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    report = bridge.load_hf_weights(model)
    return bridge, model, report


def raw_safetensors(path: Path, header: str, data: bytes) -> None:
    text = header.encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# -- A. exact shapes --------------------------------------------------------------------------------
def test_a_transposed_tensor_with_the_same_element_count_is_refused(llama, tmp_path):
    k = load_file(llama / SINGLE_NAME)[K]
    folder = edited(llama, tmp_path / "hf", **{K: k.t().contiguous()})
    with pytest.raises(CoverageError) as err:
        convert(folder)
    msg = str(err.value)
    assert K in msg and SINGLE_NAME in msg and "(48, 96)" in msg and "HF gives (96, 48)" in msg
    assert "linear_qkv.weight" in msg


# -- A. shards, offsets, duplicate keys -------------------------------------------------------------
def test_a_shard_holding_a_tensor_its_index_does_not_list_is_refused(tmp_path):
    save_file({"a": torch.ones(2), "hidden": torch.zeros(3)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"s1\.safetensors: holds tensor hidden, which .* does not list"):
        SafetensorsCheckpoint(tmp_path)


def test_a_overlapping_data_offsets_are_refused(tmp_path):
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    )
    raw_safetensors(tmp_path / SINGLE_NAME, header, bytes(12))
    with pytest.raises(CheckpointError, match="entry for b .*overlaps the tensor before it"):
        SafetensorsCheckpoint(tmp_path)


def test_a_gaps_and_trailing_bytes_in_the_data_section_are_refused(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})
    raw_safetensors(tmp_path / SINGLE_NAME, header, bytes(8))
    with pytest.raises(CheckpointError, match="leaves a gap"):
        SafetensorsCheckpoint(tmp_path)
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    raw_safetensors(tmp_path / SINGLE_NAME, header, bytes(8))
    with pytest.raises(CheckpointError, match="4 bytes after the last tensor"):
        SafetensorsCheckpoint(tmp_path)


def test_a_a_header_with_the_same_key_twice_is_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw_safetensors(tmp_path / SINGLE_NAME, f'{{"a": {entry}, "a": {entry}}}', bytes(4))
    with pytest.raises(CheckpointError, match="corrupt safetensors file .*'a' appears twice"):
        SafetensorsCheckpoint(tmp_path)


def test_c_an_index_whose_weight_map_value_is_not_a_string_is_refused(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "s1.safetensors"))
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": ["s1.safetensors"]}}))
    with pytest.raises(CheckpointError, match=r"weight_map entry 'a' is \['s1.safetensors'\], not a shard file name"):
        SafetensorsCheckpoint(tmp_path)


def test_a_safetensors_files_written_by_the_writer_and_by_safetensors_still_read(tmp_path):
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16), "e": torch.ones(0)}
    save_file(tensors, str(tmp_path / SINGLE_NAME))
    assert set(SafetensorsCheckpoint(tmp_path)) == set(tensors)
    out = tmp_path / "w"
    out.mkdir()
    with ShardedSafetensorsWriter(out, max_shard_size=30) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
        writer.finish()
    ckpt = SafetensorsCheckpoint(out)
    assert all(torch.equal(ckpt[n], t) for n, t in tensors.items())


# -- A. casts that lose a tensor; NaN/Inf -----------------------------------------------------------
def test_a_a_float16_import_of_a_weight_beyond_its_range_is_an_error(llama, tmp_path):
    down = load_file(llama / SINGLE_NAME)[DOWN].clone()
    down[0, 0] = 1e6
    folder = edited(llama, tmp_path / "hf", **{DOWN: down})
    with pytest.raises(ConfigError, match=rf"{DOWN}: casting torch.float32 to torch.float16 overflows"):
        convert(folder, "float16")


def test_a_a_cast_that_underflows_a_non_zero_tensor_to_zeros_is_an_error(llama, tmp_path):
    down = torch.full_like(load_file(llama / SINGLE_NAME)[DOWN], 1e-30)
    folder = edited(llama, tmp_path / "hf", **{DOWN: down})
    with pytest.raises(ConfigError, match=rf"{DOWN}: casting .* into all zeros \(underflow\)"):
        convert(folder, "float16")


def test_a_an_export_cast_that_overflows_is_an_error_naming_the_tensor(llama, tmp_path):
    bridge, model, _ = convert(llama)
    with torch.no_grad():
        model[0].decoder.layers[0].mlp.linear_fc2.weight[0, 0] = 1e6
    with pytest.raises(ConfigError, match=rf"{DOWN}: casting torch.float32 to torch.float16 overflows"):
        list(bridge.export_hf_weights(model, dtype="float16"))
    with pytest.raises(ConfigError, match=rf"{DOWN}: casting"):
        bridge.save_hf_pretrained(model, tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists() and siblings(tmp_path / "out") == []


def test_a_nan_and_inf_weights_are_named_on_import_and_export(llama, tmp_path, caplog):
    down = load_file(llama / SINGLE_NAME)[DOWN].clone()
    down[1, 2] = float("nan")
    folder = edited(llama, tmp_path / "hf", **{DOWN: down})
    with caplog.at_level(logging.WARNING):
        bridge, model, report = convert(folder)
    assert report.nonfinite == [DOWN]
    assert any("hold NaN or Inf" in r.getMessage() and DOWN in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        exported = dict(bridge.export_hf_weights(model))
    assert torch.isnan(exported[DOWN]).any()
    assert [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()] == [
        f"1 exported tensor(s) hold NaN or Inf values, converted as they are: {DOWN}"
    ]


def test_a_finite_weights_give_no_warning(llama, caplog):
    with caplog.at_level(logging.WARNING):
        _, _, report = convert(llama)
    assert report.nonfinite == [] and not any("NaN" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))],
)
def test_a_nonfinite_scan_names_every_tensor_holding_nan_or_inf_in_order(device):
    from bridge_core.conversion.finite import NonfiniteScan

    scan = NonfiniteScan()
    values = {"ok": 1.0, "nan": float("nan"), "inf": float("inf"), "neg": float("-inf"), "zeros": 0.0}
    for name, value in values.items():
        t = torch.ones(3, 4, dtype=torch.bfloat16, device=device)
        t[1, 2] = value
        scan.add(t, name, name + ".pair")
    scan.add(torch.tensor([7], device=device), "integers")  # no NaN in integers: not scanned
    scan.add(torch.empty(0, device=device), "empty")
    assert scan.names() == ["nan", "nan.pair", "inf", "inf.pair", "neg", "neg.pair"]
    assert NonfiniteScan().names() == []


def test_a_verify_says_why_when_logits_are_not_finite():
    from bridge_core.conversion.finite import nonfinite_logits

    good = torch.zeros(2, 3)
    assert nonfinite_logits(Megatron=good, transformers=good) is None
    why = nonfinite_logits(Megatron=torch.tensor([1.0, float("nan"), float("inf")]), transformers=good)
    assert why is not None and "Megatron's hold NaN and Inf" in why and "transformers" not in why


# -- A. reading only what is inside the named folder ------------------------------------------------
def test_a_a_symlink_to_a_file_outside_the_folder_is_refused(llama, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in llama.iterdir():
        if f.name == SINGLE_NAME:
            (folder / f.name).symlink_to(f)
        else:
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "tokenizer.json").symlink_to(secret)
    hf = HFCheckpoint(folder)
    with pytest.raises(CheckpointError, match=r"tokenizer.json: tokenizer or generation file links to .*secret.txt"):
        hf.side_files()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"model.safetensors: shard links to .*outside .*refused"):
        SafetensorsCheckpoint(folder)


def test_a_links_inside_the_folder_and_a_hub_cache_snapshot_are_read(llama, tmp_path):
    repo = tmp_path / "models--org--toy"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for f in llama.iterdir():
        (repo / "blobs" / f.name).write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("../../blobs") / f.name)
    (snapshot / "tokenizer.json").symlink_to("generation_config.json")  # a link inside the folder
    hf = HFCheckpoint(snapshot)
    assert {p.name for p in hf.side_files()} == {"generation_config.json", "tokenizer.json"}
    assert len(SafetensorsCheckpoint(snapshot)) == len(load_file(llama / SINGLE_NAME))


def _refused_without_hanging(call, match: str) -> None:
    result: list = []

    def target():
        try:
            call()
        except CheckpointError as exc:
            result.append(str(exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "reading hung on a FIFO"
    assert result and match in result[0], result


@pytest.mark.parametrize("name", [SINGLE_NAME, INDEX_NAME, "config.json", "tokenizer.json"])
def test_b_a_fifo_in_the_folder_is_refused_instead_of_hanging(llama, tmp_path, name):
    folder = tmp_path / "hf"
    folder.mkdir()
    for f in llama.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if (folder / name).exists():
        (folder / name).unlink()
    os.mkfifo(folder / name)
    if name in (SINGLE_NAME, INDEX_NAME):
        call = lambda: SafetensorsCheckpoint(folder)  # noqa: E731
    elif name == "config.json":
        call = lambda: HFCheckpoint(folder)  # noqa: E731
    else:
        call = lambda: HFCheckpoint(folder).side_files()  # noqa: E731
    _refused_without_hanging(call, f"{name}: ")
    _refused_without_hanging(call, "not a regular file; refused")


def test_a_torch_dist_metadata_naming_a_file_outside_the_checkpoint_is_refused(tmp_path):
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex

    from bridge_core.checkpoints.safe_pickle import read_dcp_metadata

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.distcp").write_bytes(b"secret")
    weights = tmp_path / "ckpt" / "iter_0000000"
    weights.mkdir(parents=True)
    for name in ("../../outside/x.distcp", "/etc/passwd"):
        storage = {MetadataIndex("w"): _StorageInfo(relative_path=name, offset=0, length=6)}
        (weights / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={}, storage_data=storage)))
        with pytest.raises(CheckpointError, match=r"\.metadata: storage file .* is not a plain file name .*refused"):
            read_dcp_metadata(weights / ".metadata")
    storage = {MetadataIndex("w"): _StorageInfo(relative_path="__0_0.distcp", offset=0, length=6)}
    (weights / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={}, storage_data=storage)))
    (weights / "__0_0.distcp").symlink_to(tmp_path / "outside" / "x.distcp")
    with pytest.raises(CheckpointError, match=r"__0_0.distcp: checkpoint storage file links to .*outside"):
        read_dcp_metadata(weights / ".metadata")
    (weights / "__0_0.distcp").unlink()
    (weights / "__0_0.distcp").write_bytes(b"inside")
    assert read_dcp_metadata(weights / ".metadata").storage_data


def test_c_a_common_state_that_is_not_a_dict_is_refused(tmp_path):
    from bridge_core.checkpoints.checkpoint_load import read_common_state

    torch.save([1, 2, 3], tmp_path / "common.pt")
    with pytest.raises(CheckpointError, match=r"common.pt: the common state is a list, not a dict; refused"):
        read_common_state(tmp_path)


# -- A. outputs that would destroy their input ------------------------------------------------------
def test_a_an_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path):
    from bridge_core.checkpoints.output_dir import check_outside_inputs

    src = tmp_path / "ckpt"
    (src / "iter").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(src)
    for out, relation in ((src, "is"), (tmp_path, "contains"), (src / "iter" / "hf", "lies inside"), (link, "is")):
        with pytest.raises(CheckpointError, match=f"--hf-path {relation} the input"):
            check_outside_inputs(out, "--hf-path", src)
    check_outside_inputs(tmp_path / "ckpt-hf", "--hf-path", src, None)  # a sibling with a common prefix


def test_a_a_relative_dot_output_is_written_in_place(tmp_path, monkeypatch):
    out = tmp_path / "here"
    out.mkdir()
    monkeypatch.chdir(out)
    with atomic_output_dir(".", overwrite=True) as tmp:
        (tmp / "f.txt").write_text("x")
    assert (out / "f.txt").read_text() == "x" and siblings(out) == ["here"]


# -- A/B. one writer per output, stale partials, interrupts -----------------------------------------
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from bridge_core.checkpoints.output_dir import atomic_output_dir
    from bridge_core.errors import CheckpointError
    out, tag, hold = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    try:
        with atomic_output_dir(out) as tmp:
            (tmp / "owner.txt").write_text(tag)
            print("writing", flush=True)
            time.sleep(hold)
    except CheckpointError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    """
)


def start_writer(out: Path, tag: str, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(out), tag, str(hold)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_two_concurrent_writers_to_the_same_new_folder_cannot_both_succeed(tmp_path):
    out = tmp_path / "out"
    first = start_writer(out, "first", 3)
    assert first.stdout.readline().strip() == "writing"  # holds the folder now
    second = start_writer(out, "second", 0)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and "another process" in err and "is writing this folder now" in err
    assert first.wait(timeout=60) == 0
    assert (out / "owner.txt").read_text() == "first" and siblings(out) == ["out"]


def test_b_stale_partials_are_removed_but_never_a_live_writers(tmp_path):
    out = tmp_path / "out"
    stale = tmp_path / ".out.partial-999999"
    stale.mkdir()
    (stale / "big.bin").write_bytes(bytes(1000))
    live = start_writer(out, "live", 3)
    assert live.stdout.readline().strip() == "writing"
    assert not stale.exists()  # the live writer removed the killed run's leftovers
    partials = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(partials) == 1 and (partials[0] / "owner.txt").read_text() == "live"
    with pytest.raises(CheckpointError, match="is writing this folder now"), atomic_output_dir(out):
        pass
    assert (partials[0] / "owner.txt").exists()  # untouched
    assert live.wait(timeout=60) == 0 and (out / "owner.txt").read_text() == "live"


def test_b_a_killed_writer_leaves_no_lock_that_blocks_the_next_run(tmp_path):
    out = tmp_path / "out"
    killed = start_writer(out, "killed", 60)
    assert killed.stdout.readline().strip() == "writing"
    killed.kill()
    killed.wait()
    with atomic_output_dir(out) as tmp:
        (tmp / "owner.txt").write_text("next")
    assert (out / "owner.txt").read_text() == "next" and siblings(out) == ["out"]


def test_a_the_final_rename_never_replaces_a_folder_it_did_not_move_away(tmp_path):
    from bridge_core.checkpoints.output_dir import rename_noreplace

    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="exists and is not empty"), atomic_output_dir(out) as tmp:
        (tmp / "mine.txt").write_text("mine")
        out.mkdir()  # another program (not taking the lock) made it meanwhile
        (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"] and siblings(out) == ["out"]
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()  # empty: os.rename would replace it
    with pytest.raises(CheckpointError, match="appeared while this run was writing it"):
        rename_noreplace(src, dst)
    assert src.exists()


def test_a_without_renameat2_the_rename_still_refuses_an_existing_target(tmp_path, monkeypatch):
    import bridge_core.checkpoints.output_dir as output_dir

    monkeypatch.setattr(output_dir, "_renameat2", lambda: None)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with pytest.raises(CheckpointError, match="appeared while this run was writing it"):
        output_dir.rename_noreplace(src, dst)
    dst.rmdir()
    output_dir.rename_noreplace(src, dst)
    assert dst.is_dir() and not src.exists()


def test_b_an_interrupt_while_finishing_leaves_nothing(tmp_path, monkeypatch):
    import bridge_core.checkpoints.output_dir as output_dir

    def interrupted(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(output_dir, "fsync_tree", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic_output_dir(out) as tmp:
        (tmp / "f.txt").write_text("x")
    assert siblings(out) == []


# -- B. disk full and read-only targets -------------------------------------------------------------
def _write_model(out: Path) -> None:
    with atomic_output_dir(out) as tmp, ShardedSafetensorsWriter(tmp, max_shard_size=2**20) as writer:
        for i in range(4):
            writer.add(f"w{i}", torch.ones(2**18))  # 1 MiB each
        writer.finish()


def test_b_disk_full_is_one_line_naming_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    import bridge_core.checkpoints.hf_writer as hf_writer

    real = os.pwrite
    written = [0]

    def full_disk(fd, data, offset):
        written[0] += 1
        if written[0] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(hf_writer.os, "pwrite", full_disk)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError) as err:
        _write_model(out)
    assert str(err.value) == f"{out}: cannot write it: No space left on device; nothing was written"
    assert siblings(out) == []


@pytest.fixture
def tiny_mount(tmp_path):
    """A 1 MiB tmpfs (root only); skipped where mounting is not possible."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_b_a_real_full_disk_and_a_read_only_target(tiny_mount):
    out = tiny_mount / "out"
    with pytest.raises(CheckpointError, match=f"^{out}: cannot write it: No space left on device"):
        _write_model(out)
    assert list(tiny_mount.iterdir()) == []
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    with pytest.raises(CheckpointError, match=f"^{out}: cannot write it: Read-only file system"):
        _write_model(out)


def test_b_the_lock_is_released_between_runs(tmp_path):
    out = tmp_path / "out"
    for i in range(2):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "i.txt").write_text(str(i))
        time.sleep(0.01)
    assert (out / "i.txt").read_text() == "1" and siblings(out) == ["out"]
