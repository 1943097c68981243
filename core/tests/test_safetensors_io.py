"""Safetensors reading (headers, shards, refusals), sharded writing, shard sizes and atomic output folders."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter, parse_size
from bridge_core.checkpoints.output_dir import atomic_output_dir
from bridge_core.checkpoints.safetensors_io import INDEX_NAME, SafetensorsCheckpoint, TensorMeta, read_header
from bridge_core.errors import CheckpointError, ConfigError

A = torch.arange(6, dtype=torch.float32).reshape(2, 3)
B = torch.arange(4, dtype=torch.bfloat16)
STACKED = torch.arange(24, dtype=torch.float16).reshape(4, 2, 3)


def write_index(folder, weight_map):
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture
def single(tmp_path):
    folder = tmp_path / "single"
    folder.mkdir()
    save_file({"a": A, "b": B, "s": STACKED}, str(folder / "model.safetensors"))
    return folder


@pytest.fixture
def sharded(tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    save_file({"a": A}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b": B, "s": STACKED}, str(folder / "model-00002-of-00002.safetensors"))
    write_index(
        folder,
        {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "s": "model-00002-of-00002.safetensors",
        },
    )
    return folder


# -- reading --------------------------------------------------------------------------------------
def test_single_file_meta_has_shape_dtype_and_file(single):
    ckpt = SafetensorsCheckpoint(single)
    assert ckpt.meta["a"] == TensorMeta("model.safetensors", (2, 3), torch.float32)
    assert ckpt.meta["b"].dtype == torch.bfloat16 and ckpt.meta["s"].shape == (4, 2, 3)
    assert ckpt.total_bytes == 6 * 4 + 4 * 2 + 24 * 2


def test_sharded_meta_follows_the_index(sharded):
    ckpt = SafetensorsCheckpoint(sharded)
    assert ckpt.meta["a"].file == "model-00001-of-00002.safetensors"
    assert ckpt.meta["s"].file == "model-00002-of-00002.safetensors"


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_get_tensor_returns_the_stored_values(layout, request):
    ckpt = SafetensorsCheckpoint(request.getfixturevalue(layout))
    assert torch.equal(ckpt.get_tensor("a"), A)
    assert torch.equal(ckpt.get_tensor("b"), B) and ckpt.get_tensor("b").dtype == torch.bfloat16


def test_get_slice_reads_one_row_of_a_stacked_tensor(single):
    assert torch.equal(SafetensorsCheckpoint(single).get_slice("s", 2), STACKED[2])


def test_unknown_tensor_is_a_checkpoint_error(single):
    with pytest.raises(CheckpointError, match="tensor nope is not in the checkpoint"):
        SafetensorsCheckpoint(single).get_tensor("nope")


def test_checkpoint_is_a_mapping(single):
    ckpt = SafetensorsCheckpoint(single)
    assert len(ckpt) == 3 and set(ckpt) == {"a", "b", "s"}
    assert "a" in ckpt and "nope" not in ckpt
    assert torch.equal(ckpt["a"], A)
    assert torch.equal(dict(ckpt.items())["s"], STACKED)


def test_mapping_get_returns_default_for_missing_key(single):
    assert SafetensorsCheckpoint(single).get("nope") is None


def test_one_handle_per_file_is_reused(single, sharded):
    ckpt = SafetensorsCheckpoint(single)
    ckpt.get_tensor("a"), ckpt.get_tensor("b"), ckpt.get_slice("s", 0)
    assert len(ckpt._handles) == 1
    ckpt = SafetensorsCheckpoint(sharded)
    ckpt.get_tensor("a"), ckpt.get_tensor("b"), ckpt.get_tensor("s"), ckpt.get_tensor("a")
    assert len(ckpt._handles) == 2


def test_headers_are_read_without_opening_handles(sharded):
    assert SafetensorsCheckpoint(sharded)._handles == {}


def test_every_dtype_reads_bit_exact_like_safetensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(5, 7, generator=gen) * 100
    tensors = {
        "f32": values,
        "f64": values.double(),
        "f16": values.half(),
        "bf16": values.bfloat16(),
        "fp8_e4m3": (values / 100).to(torch.float8_e4m3fn),
        "fp8_e5m2": (values / 100).to(torch.float8_e5m2),
        "i64": values.long(),
        "i32": values.int(),
        "i16": values.short(),
        "i8": values.to(torch.int8),
        "u8": values.abs().to(torch.uint8),
        "bool": values > 0,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4, dtype=torch.bfloat16),
        "odd": torch.arange(3, dtype=torch.int8),  # leaves the next tensor at an odd offset
        "after_odd": torch.arange(3, dtype=torch.bfloat16),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    reference = load_file(str(tmp_path / "model.safetensors"))
    ckpt = SafetensorsCheckpoint(tmp_path)
    for name, expected in reference.items():
        got = ckpt.get_tensor(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)), name


def test_zero_element_tensor_has_its_shape_and_dtype(tmp_path):
    save_file({"e": torch.empty(3, 0, dtype=torch.float16), "a": A}, str(tmp_path / "model.safetensors"))
    ckpt = SafetensorsCheckpoint(tmp_path)
    e = ckpt.get_tensor("e")
    assert e.shape == (3, 0) and e.dtype == torch.float16 and ckpt.meta["e"].nbytes == 0
    assert torch.equal(ckpt.get_tensor("a"), A)


def test_tensors_are_fresh_writable_memory(single):
    ckpt = SafetensorsCheckpoint(single)
    a = ckpt.get_tensor("a")
    a.add_(1)  # a memory-mapped or read-only buffer would refuse or write through
    assert torch.equal(ckpt.get_tensor("a"), A)
    assert a.data_ptr() != ckpt.get_tensor("a").data_ptr()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_shards_are_not_memory_mapped(sharded):
    ckpt = SafetensorsCheckpoint(sharded)
    kept = [ckpt[name] for name in ckpt]
    maps = Path("/proc/self/maps").read_text()
    assert str(sharded) not in maps and len(kept) == 3


def test_get_slice_takes_negative_indices_and_refuses_out_of_range(single):
    ckpt = SafetensorsCheckpoint(single)
    assert torch.equal(ckpt.get_slice("s", -1), STACKED[-1])
    assert torch.equal(ckpt.get_slice("s", 0), STACKED[0])
    with pytest.raises(IndexError, match="index 4 is out of range for s of shape"):
        ckpt.get_slice("s", 4)
    with pytest.raises(IndexError, match="index -5 is out of range"):
        ckpt.get_slice("s", -5)


def test_get_slice_with_a_non_integer_index_reads_the_whole_tensor(single):
    ckpt = SafetensorsCheckpoint(single)
    assert torch.equal(ckpt.get_slice("s", slice(1, 3)), STACKED[1:3])
    assert torch.equal(ckpt.get_slice("s", (slice(None), 1)), STACKED[:, 1])


def test_get_slice_of_an_unknown_tensor_is_a_checkpoint_error(single):
    with pytest.raises(CheckpointError, match="tensor nope is not in the checkpoint"):
        SafetensorsCheckpoint(single).get_slice("nope", 0)


class ShortReads:
    """A file handle whose ``readinto`` returns at most 3 bytes, as a large read may."""

    def __init__(self, handle):
        self.handle = handle

    def seek(self, pos):
        return self.handle.seek(pos)

    def readinto(self, buf):
        with memoryview(buf) as view:
            return self.handle.readinto(view[:3])


def test_short_reads_are_completed(single, monkeypatch):
    import bridge_core.checkpoints.safetensors_io as io_module

    ckpt = SafetensorsCheckpoint(single)
    preadv = io_module.os.preadv
    monkeypatch.setattr(io_module.os, "preadv", lambda fd, bufs, offset: preadv(fd, [bufs[0][:3]], offset))
    assert torch.equal(ckpt.get_tensor("a"), A) and torch.equal(ckpt.get_slice("s", 3), STACKED[3])


def test_short_reads_are_completed_without_preadv(single, monkeypatch):
    import bridge_core.checkpoints.safetensors_io as io_module

    monkeypatch.delattr(io_module.os, "preadv")
    ckpt = SafetensorsCheckpoint(single)
    ckpt.get_tensor("b")
    ckpt._handles["model.safetensors"] = ShortReads(ckpt._handles["model.safetensors"])
    assert torch.equal(ckpt.get_tensor("a"), A) and torch.equal(ckpt.get_slice("s", 3), STACKED[3])


def test_file_truncated_after_the_header_check_is_named(single):
    path = single / "model.safetensors"
    ckpt = SafetensorsCheckpoint(single)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(CheckpointError) as err:
        for name in ckpt:
            ckpt.get_tensor(name)
    assert str(path) in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)


def test_shard_removed_before_its_first_read_cannot_be_opened(sharded):
    ckpt = SafetensorsCheckpoint(sharded)
    (sharded / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors: cannot open"):
        ckpt.get_tensor("a")


def test_close_closes_the_handles_and_a_later_read_reopens(single):
    ckpt = SafetensorsCheckpoint(single)
    ckpt.get_tensor("a")
    handle = ckpt._handles["model.safetensors"]
    ckpt.close()
    assert handle.closed and ckpt._handles == {}
    assert torch.equal(ckpt.get_tensor("b"), B)


def test_unsupported_dtype_is_named_when_read(tmp_path):
    write_raw(tmp_path / "model.safetensors", {"q": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 2]}}, b"ab")
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert ckpt.meta["q"].dtype == "F4"
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read q \\(dtype F4 is not supported\\)"):
        ckpt.get_tensor("q")


# -- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../model.safetensors", "/tmp/model.safetensors", "sub/model.safetensors", ".."])
def test_index_shard_outside_the_folder_is_refused(sharded, name):
    write_index(sharded, {"a": name})
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(sharded)
    assert INDEX_NAME in str(err.value) and repr(name) in str(err.value) and "refused" in str(err.value)


def test_index_shard_missing_on_disk_is_named(sharded):
    write_index(sharded, {"a": "model-00001-of-00002.safetensors", "b": "model-00009-of-00009.safetensors"})
    with pytest.raises(CheckpointError, match="shard model-00009-of-00009.safetensors is missing"):
        SafetensorsCheckpoint(sharded)


def test_index_listing_a_key_its_shard_lacks_is_named(sharded):
    write_index(sharded, {"a": "model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(sharded)
    assert "a is listed in model-00002-of-00002.safetensors, which does not hold it" in str(err.value)
    assert INDEX_NAME in str(err.value)


def test_index_without_weight_map_is_refused(sharded):
    (sharded / INDEX_NAME).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="needs a 'weight_map' object"):
        SafetensorsCheckpoint(sharded)


def test_truncated_file_is_named(single):
    path = single / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(single)
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_garbage_file_is_named_as_corrupt(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff\xfe garbage, not safetensors at all" * 4)
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(tmp_path)
    assert str(path) in str(err.value) and "corrupt" in str(err.value)


def test_header_that_is_not_json_is_named_as_corrupt(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", 6) + b"{oops}" + b"\0" * 16)
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors file"):
        SafetensorsCheckpoint(tmp_path)


def test_file_shorter_than_a_header_length_is_corrupt(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        SafetensorsCheckpoint(tmp_path)


def write_raw(path, header, data=b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_header_offsets_past_the_end_of_the_file_are_truncation(tmp_path):
    path = write_raw(
        tmp_path / "model.safetensors",
        {
            "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
            "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
        },
        b"\0" * 20,
    )
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(tmp_path)
    assert str(path) in str(err.value) and "truncated safetensors file" in str(err.value)


@pytest.mark.parametrize(
    "entry,detail",
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}, "hold 12 bytes, a F32 tensor of shape [4] needs 16"),
        ({"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 16]}, "hold 16 bytes"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "data_offsets [16, 0]"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [-4, 12]}, "data_offsets [-4, 12]"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16]}, "data_offsets [0.0, 16]"),
        ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, None),
        ({"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}, None),
        ({"dtype": 7, "shape": [4], "data_offsets": [0, 16]}, None),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0]}, None),
        ({"dtype": "F32", "shape": [4]}, None),
        ([0, 16], None),
    ],
)
def test_inconsistent_header_entry_is_named_as_corrupt(tmp_path, entry, detail):
    path = write_raw(tmp_path / "model.safetensors", {"__metadata__": {"format": "pt"}, "w": entry}, b"\0" * 32)
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: corrupt safetensors header entry for w") and "\n" not in message
    assert detail is None or detail in message


def test_read_header_gives_metadata_only(single):
    header = read_header(single / "model.safetensors")
    assert header == {
        "a": TensorMeta("model.safetensors", (2, 3), torch.float32),
        "b": TensorMeta("model.safetensors", (4,), torch.bfloat16),
        "s": TensorMeta("model.safetensors", (4, 2, 3), torch.float16),
    }


def test_pickle_only_folder_is_refused_without_loading(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError) as err:
        SafetensorsCheckpoint(tmp_path)
    assert "pytorch_model.bin" in str(err.value) and "pickle checkpoints are not loaded" in str(err.value)


def test_empty_folder_has_no_weights(tmp_path):
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors weights$"):
        SafetensorsCheckpoint(tmp_path)


def test_duplicate_key_across_unindexed_files_names_both(tmp_path):
    save_file({"a": A}, str(tmp_path / "one.safetensors"))
    save_file({"a": A, "c": B}, str(tmp_path / "two.safetensors"))
    with pytest.raises(CheckpointError, match="tensor a appears in one.safetensors and two.safetensors"):
        SafetensorsCheckpoint(tmp_path)


# -- writing --------------------------------------------------------------------------------------
def test_writer_splits_at_max_shard_size_and_writes_the_index(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_size=1000)
    tensors = {f"t{i}": torch.full((100,), float(i)) for i in range(5)}  # 400 bytes each
    for name, t in tensors.items():
        writer.add(name, t)
    weight_map = writer.finish()
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names, INDEX_NAME])
    assert weight_map == {"t0": names[0], "t1": names[0], "t2": names[1], "t3": names[1], "t4": names[2]}
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index == {"metadata": {"total_size": 2000}, "weight_map": weight_map}
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert all(torch.equal(ckpt[name], t) for name, t in tensors.items())


def test_writer_puts_an_oversized_tensor_in_its_own_shard(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path, max_shard_size="100B")
    writer.add("small", torch.zeros(4))
    writer.add("big", torch.zeros(1000))
    writer.add("tail", torch.zeros(4))
    assert len(set(writer.finish().values())) == 3


def test_writer_writes_views_of_one_storage(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    parts = {"c0": base.chunk(3)[0], "c1": base.chunk(3)[1], "col": base[:, 1], "t": base.T}
    writer = ShardedSafetensorsWriter(tmp_path)
    for name, t in parts.items():
        writer.add(name, t)
    writer.finish()
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert all(torch.equal(ckpt[name], t) for name, t in parts.items())
    assert torch.equal(base, torch.arange(24, dtype=torch.float32).reshape(6, 4))


def test_writer_refuses_a_name_twice(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path)
    writer.add("a", A)
    with pytest.raises(ValueError, match="tensor a written twice"):
        writer.add("a", A)


def test_writer_writes_one_tensor_under_two_names(tmp_path):
    writer = ShardedSafetensorsWriter(tmp_path)
    writer.add("model.embed_tokens.weight", A)
    writer.add("lm_head.weight", A)
    writer.finish()
    ckpt = SafetensorsCheckpoint(tmp_path)
    assert torch.equal(ckpt["lm_head.weight"], A) and torch.equal(ckpt["model.embed_tokens.weight"], A)


# -- parse_size -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,expected",
    [
        ("5GB", 5 * 10**9),
        ("500MiB", 500 * 2**20),
        ("1.5KB", 1500),
        (" 2 kib ", 2048),
        ("10", 10),
        ("3TB", 3 * 10**12),
        (1234, 1234),
    ],
)
def test_parse_size_units(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["5XB", "", "GB", "-1", "5 G B"])
def test_parse_size_refuses_bad_input(value):
    with pytest.raises(ConfigError, match="is not a size like"):
        parse_size(value)


@pytest.mark.parametrize("value", ["1.2.3GB", ".MB"])
def test_parse_size_refuses_malformed_numbers(value):
    with pytest.raises(ConfigError):
        parse_size(value)


# -- atomic output folders ------------------------------------------------------------------------
def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_atomic_output_dir_renames_into_place_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "f.txt").write_text("new")
        assert not out.exists() and tmp.parent == tmp_path and tmp.name.startswith(".out.partial-")
    assert (out / "f.txt").read_text() == "new"
    assert siblings(out) == ["out"]


def test_atomic_output_dir_flushes_everything_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    import bridge_core.checkpoints.output_dir as output_dir

    events = []
    real_rename = output_dir.rename_noreplace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))))
    monkeypatch.setattr(
        output_dir, "rename_noreplace", lambda src, dst: events.append(("rename", str(dst))) or real_rename(src, dst)
    )
    out = tmp_path / "out"
    with output_dir.atomic_output_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.json").write_text("{}")
        (tmp / "sub" / "b.bin").write_bytes(b"x")
    before_rename = sorted(name for _, name in events[:-2])
    assert before_rename == sorted(str(tmp / name) for name in ("", "a.json", "sub", "sub/b.bin"))
    assert events[-2:] == [("rename", str(out)), ("fsync", str(tmp_path))]


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"), atomic_output_dir(out) as tmp:
        (tmp / "f.txt").write_text("half")
        raise RuntimeError("boom")
    assert siblings(out) == []


def test_atomic_output_dir_refuses_a_non_empty_folder_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(CheckpointError) as err, atomic_output_dir(out):
        pass
    assert str(out) in str(err.value) and "not empty" in str(err.value) and "overwrite" in str(err.value)
    assert (out / "old.txt").read_text() == "old" and siblings(out) == ["out"]


def test_atomic_output_dir_accepts_an_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "f.txt").write_text("new")
    assert (out / "f.txt").read_text() == "new"


def test_atomic_output_dir_replaces_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert siblings(out) == ["out"]


def test_atomic_output_dir_keeps_the_old_folder_when_overwrite_fails(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and siblings(out) == ["out"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_atomic_output_dir_refuses_a_path_that_is_a_file(tmp_path, overwrite):
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(CheckpointError, match="exists and is not a folder"), atomic_output_dir(out, overwrite):
        pass
    assert out.read_text() == "a file"


def test_atomic_output_dir_creates_missing_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("x")
    assert (out / "f").is_file()
