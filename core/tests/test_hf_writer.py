"""The streaming safetensors writer: layout, bit-exact reload, no copies of views, no leftovers."""

from __future__ import annotations

import gc
import json
import os
import struct
from pathlib import Path

import _test_bridges
import numpy as np
import pytest
import torch
from _test_bridges import stack_experts
from safetensors import safe_open
from safetensors.torch import load_file
from test_engine import LLAMA, MOE, convert

from bridge_core.checkpoints import hf_writer
from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter, tensor_bytes
from bridge_core.checkpoints.output_dir import atomic_output_dir
from bridge_core.checkpoints.safetensors_io import INDEX_NAME, SafetensorsCheckpoint
from bridge_core.errors import CheckpointError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.toy import ToyModel, build_toy


def model_tensors() -> dict[str, torch.Tensor]:
    """Mixed dtypes, and views of shared storages as the export yields them (q/k/v rows, gate/up halves)."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(12, 8, generator=gen).to(torch.bfloat16)
    fc1 = torch.randn(10, 8, generator=gen).to(torch.bfloat16)
    gate, up = fc1.chunk(2)
    return {
        "embed": torch.randn(16, 8, generator=gen).to(torch.bfloat16),
        "q": qkv[:8],
        "k": qkv[8:10],
        "v": qkv[10:],
        "norm": torch.randn(8, generator=gen),  # fp32 among bf16: must stay aligned
        "gate": gate,
        "up": up,
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(5, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "down": torch.randn(8, 5, generator=gen).to(torch.float16),
    }


def plan_of(tensors: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]


def read_raw_header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return n, json.loads(f.read(n))


def check_file_layout(path: Path) -> dict:
    """The safetensors invariants: 8-byte padded header, format metadata, contiguous aligned data."""
    n, header = read_raw_header(path)
    assert (8 + n) % 8 == 0
    assert header.pop("__metadata__") == {"format": "pt"}
    spans = sorted((info["data_offsets"], info["dtype"]) for info in header.values())
    position = 0
    sizes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
    for (begin, end), dtype in spans:
        assert begin == position and begin % sizes[dtype] == 0
        position = end
    assert path.stat().st_size == 8 + n + position
    return header


def assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(loaded) == set(expected)
    for name, t in expected.items():
        assert loaded[name].dtype == t.dtype and loaded[name].shape == t.shape, name
        got, want = loaded[name].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(got, want), name  # bit-exact (NaN payloads and signed zeros included)


def folder_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- planned mode ---------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["planned", "reversed"])
def test_planned_writer_reloads_bit_exact_in_any_arrival_order(tmp_path, order):
    tensors = model_tensors()
    fds = open_fds()
    with ShardedSafetensorsWriter(tmp_path, max_shard_size=200) as writer:
        writer.plan(plan_of(tensors))
        items = list(tensors.items())
        for name, t in items if order == "planned" else reversed(items):
            writer.add(name, t)
        weight_map = writer.finish()
    assert open_fds() == fds
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 2 and folder_files(tmp_path) == sorted([*shards, INDEX_NAME])
    loaded = {}
    for shard in shards:
        header = check_file_layout(tmp_path / shard)
        assert {n for n, s in weight_map.items() if s == shard} == set(header)
        loaded.update(load_file(tmp_path / shard))
    assert_same(loaded, tensors)
    assert_same(dict(SafetensorsCheckpoint(tmp_path).items()), tensors)


def test_planned_split_matches_arrival_order_split_and_the_index(tmp_path):
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    planned, unplanned = tmp_path / "planned", tmp_path / "unplanned"
    planned.mkdir(), unplanned.mkdir()
    with ShardedSafetensorsWriter(planned, max_shard_size=1000) as writer:
        writer.plan(plan_of(tensors))
        for name, t in tensors.items():
            writer.add(name, t)
        weight_map = writer.finish()
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert weight_map == {"t0": names[0], "t1": names[0], "t2": names[1], "t3": names[1], "t4": names[2]}
    index = json.loads((planned / INDEX_NAME).read_text())
    assert index == {"metadata": {"total_size": 2000}, "weight_map": weight_map}
    with ShardedSafetensorsWriter(unplanned, max_shard_size=1000) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
        assert writer.finish() == weight_map
    for name in names:  # same bytes either way
        assert (planned / name).read_bytes() == (unplanned / name).read_bytes()


def test_oversized_tensor_gets_its_own_shard_when_planned(tmp_path):
    tensors = {"small": torch.zeros(4), "big": torch.ones(1000), "tail": torch.zeros(4)}
    with ShardedSafetensorsWriter(tmp_path, max_shard_size="100B") as writer:
        writer.plan(plan_of(tensors))
        for name, t in tensors.items():
            writer.add(name, t)
        assert len(set(writer.finish().values())) == 3


def test_a_shard_is_fsynced_and_closed_once_its_last_tensor_is_in(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(hf_writer.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(4)}
    with ShardedSafetensorsWriter(tmp_path, max_shard_size=800) as writer:
        writer.plan(plan_of(tensors))
        writer.add("t0", tensors["t0"])
        assert synced == [] and (tmp_path / ".shard-00000").exists()
        writer.add("t1", tensors["t1"])
        assert len(synced) == 1  # first shard complete: flushed and closed
        writer.add("t3", tensors["t3"])
        writer.add("t2", tensors["t2"])
        assert len(synced) == 2
        writer.finish()
    assert len(synced) == 4  # + the index and the folder


def test_planned_writer_refuses_what_the_plan_does_not_say(tmp_path):
    with ShardedSafetensorsWriter(tmp_path) as writer:
        writer.plan([("a", (2, 3), torch.float32), ("b", (4,), torch.bfloat16)])
        with pytest.raises(ValueError, match="tensor c is not in the plan"):
            writer.add("c", torch.zeros(1))
        with pytest.raises(ValueError, match=r"tensor a: got \(3, 2\) torch.float32, planned \(2, 3\)"):
            writer.add("a", torch.zeros(3, 2))
        with pytest.raises(ValueError, match="tensor b: got .*bfloat16"):
            writer.add("b", torch.zeros(4))
        writer.add("a", torch.zeros(2, 3))
        with pytest.raises(ValueError, match="tensor a written twice"):
            writer.add("a", torch.zeros(2, 3))
        with pytest.raises(ValueError, match="planned twice"):
            ShardedSafetensorsWriter(tmp_path).plan([("x", (1,), torch.float32)] * 2)


def test_finish_refuses_an_incomplete_plan_and_close_leaves_nothing(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_size=100)
    writer.plan([("a", (10,), torch.float32), ("b", (10,), torch.float32), ("c", (10,), torch.float32)])
    writer.add("a", torch.zeros(10))
    writer.add("c", torch.zeros(10))
    with pytest.raises(CheckpointError, match="1 planned tensor.s. never arrived: b"):
        writer.finish()
    writer.close()
    assert folder_files(tmp_path) == []


def test_failing_export_leaves_no_folder_files_or_open_handles(tmp_path):
    tensors = model_tensors()
    fds = open_fds()

    def weights():
        for i, item in enumerate(tensors.items()):
            if i == 5:
                raise RuntimeError("rank 1 died")
            yield item

    with pytest.raises(RuntimeError, match="rank 1 died"):
        with atomic_output_dir(tmp_path / "out") as tmp, ShardedSafetensorsWriter(tmp, max_shard_size=64) as writer:
            writer.plan(plan_of(tensors))
            for name, t in weights():
                writer.add(name, t)
            writer.finish()
    assert folder_files(tmp_path) == []  # neither the folder nor its temporary sibling
    assert open_fds() == fds


# -- bytes ----------------------------------------------------------------------------------------
def test_tensor_bytes_of_a_view_is_the_view_memory_not_a_copy():
    base = torch.arange(40, dtype=torch.float32).reshape(10, 4).to(torch.bfloat16)
    view = base[6:9]  # like a k slice of a fused qkv weight: contiguous, storage offset 24
    data = tensor_bytes(view)
    array = np.frombuffer(data, dtype=np.uint8)
    assert array.ctypes.data == view.data_ptr() and len(data) == view.nbytes
    assert bytes(data) == view.clone().view(torch.int16).numpy().tobytes()


def test_tensor_bytes_of_a_non_contiguous_tensor_is_row_major():
    t = torch.arange(12, dtype=torch.int32).reshape(3, 4).T
    assert bytes(tensor_bytes(t)) == np.ascontiguousarray(t.numpy()).astype("<i4").tobytes()


def test_tensor_bytes_are_little_endian_on_a_big_endian_host(monkeypatch):
    monkeypatch.setattr(hf_writer, "_LITTLE_ENDIAN", False)  # what a big-endian host does: swap
    t = torch.tensor([1.5, -2.0], dtype=torch.float32)
    assert bytes(tensor_bytes(t)) == t.numpy().astype(">f4").tobytes()


# -- unplanned mode -------------------------------------------------------------------------------
def test_unplanned_writer_aligns_mixed_dtypes_and_removes_its_data_files(tmp_path):
    tensors = model_tensors()
    with ShardedSafetensorsWriter(tmp_path, max_shard_size=200) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
            assert len([p for p in tmp_path.iterdir() if p.name.endswith(".data")]) <= 1
        weight_map = writer.finish()
    shards = sorted(set(weight_map.values()))
    assert folder_files(tmp_path) == sorted([*shards, INDEX_NAME])
    loaded = {}
    for shard in shards:
        check_file_layout(tmp_path / shard)
        loaded.update(load_file(tmp_path / shard))
    assert_same(loaded, tensors)


def test_unplanned_writer_without_copy_file_range(tmp_path, monkeypatch):
    monkeypatch.delattr(hf_writer.os, "copy_file_range", raising=False)
    monkeypatch.setattr(hf_writer, "_COPY_CHUNK", 7)  # several user-space chunks per tensor
    tensors = model_tensors()
    with ShardedSafetensorsWriter(tmp_path) as writer:
        for name, t in tensors.items():
            writer.add(name, t)
        writer.finish()
    assert_same(load_file(tmp_path / "model.safetensors"), tensors)


def test_failed_unplanned_write_removes_its_data_file(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardedSafetensorsWriter(tmp_path) as writer:
            writer.add("a", torch.zeros(3))
            assert [p.name for p in tmp_path.iterdir()] == [".shard-00000.data"]
            raise RuntimeError
    assert folder_files(tmp_path) == []


# -- with transformers and the export plan --------------------------------------------------------
def test_transformers_loads_the_planned_shards(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = {**LLAMA, "tie_word_embeddings": True, "vocab_size": 999}
    folder = build_toy(ToyModel("LlamaForCausalLM", cfg, dtype="bfloat16"), tmp_path / "src")
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    state = {n: t for n, t in reference.state_dict().items() if n != "lm_head.weight"}
    out = tmp_path / "out"
    out.mkdir()
    with ShardedSafetensorsWriter(out, max_shard_size="100KB") as writer:
        writer.plan(plan_of(state))
        for name, t in state.items():
            writer.add(name, t)
        assert len(set(writer.finish().values())) > 1
    reference.config.save_pretrained(out)
    again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    for name, t in again.state_dict().items():
        assert torch.equal(t, reference.state_dict()[name]), name


@pytest.fixture
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


@pytest.mark.parametrize("kind", ["tied-bf16", "stacked-moe"])
def test_export_plan_is_what_the_export_yields_in_order(tmp_path, test_plugin, kind):
    if kind == "tied-bf16":
        cfg = {**LLAMA, "tie_word_embeddings": True, "vocab_size": 999}
        folder = build_toy(ToyModel("LlamaForCausalLM", cfg, dtype="bfloat16"), tmp_path / "src")
    else:
        per_expert = build_toy(ToyModel("Qwen3MoeForCausalLM", MOE), tmp_path / "moe")
        folder = stack_experts(per_expert, tmp_path / "stacked", MOE["num_experts"])
    bridge, model = convert(folder)
    plans = []
    yielded = [(n, tuple(t.shape), t.dtype) for n, t in bridge.export_hf_weights(model, on_plan=plans.append)]
    assert plans == [yielded]
    if kind == "stacked-moe":
        assert any(len(shape) == 3 and shape[0] == MOE["num_experts"] for _, shape, _ in yielded)
    out = bridge.save_hf_pretrained(model, tmp_path / "out", max_shard_size="50KB")
    original = SafetensorsCheckpoint(folder)
    saved = SafetensorsCheckpoint(out)
    assert set(saved) == set(original) and all(torch.equal(saved[n], original[n]) for n in original)
    shards = set(json.loads((out / INDEX_NAME).read_text())["weight_map"].values())
    assert len(shards) > 1
    for shard in shards:
        check_file_layout(out / shard)
        with safe_open(out / shard, "pt") as f:
            assert f.metadata() == {"format": "pt"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_tensor_bytes_leave_the_storage_reusable_and_keep_the_tensor_alive():
    """A streaming export writes views of its window buffers and resizes those buffers to reuse them:
    taking a tensor's bytes must not mark its storage non-resizable (numpy's view does), and the bytes
    stay valid while the view lives, also of a copy made for a non-contiguous tensor."""
    tensor_bytes = hf_writer.tensor_bytes
    base = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    view = tensor_bytes(base[1:])
    assert base.untyped_storage().resizable()
    assert bytes(view) == base[1:].contiguous().view(torch.uint8).numpy().tobytes()
    strided = tensor_bytes(base.t())  # a contiguous copy, owned by the view
    del base
    gc.collect()
    want = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t().contiguous()
    assert bytes(strided) == want.view(torch.uint8).numpy().tobytes()
