"""The streaming conversion's I/O paths: reused buffers, rows read straight into each stored piece (and
ahead of torch's writer threads), boxes read straight from the checkpoint's records, shards fsynced
in the background. Each path gives the same bytes as the plain one."""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter
from pathlib import Path

import _test_bridges
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from test_streaming import LLAMA, stored_tensors
from torch.distributed.checkpoint import FileSystemWriter

from bridge_core.checkpoints import piece_reader
from bridge_core.checkpoints.piece_reader import PieceReader, _contiguous_span, _merged
from bridge_core.conversion import stream_export, stream_import, stream_reads
from bridge_core.conversion.stream_buffers import BufferPool, Writeback
from bridge_core.conversion.stream_reads import Piece, clip
from bridge_core.conversion.workflows import import_checkpoint
from bridge_core.errors import CheckpointError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.testing.compare import compare_hf_weights
from bridge_core.testing.toy import ToyModel, build_toy

# 4 layers of repeated shapes, a vocabulary padded at TP=1 (1000 -> 1024 rows), bf16 on disk
TOY = ToyModel("LlamaForCausalLM", {**LLAMA, "num_hidden_layers": 4}, dtype="bfloat16")
UP = "model.layers.2.mlp.up_proj.weight"


@pytest.fixture(autouse=True)
def test_plugin():
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    yield
    destroy_model_parallel()
    reset_registry()


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return build_toy(TOY, tmp_path_factory.mktemp("stream-io") / "hf")


@pytest.fixture(scope="module")
def live(toy, tmp_path_factory) -> dict[str, torch.Tensor]:
    registry = Registry()
    registry.add_plugin(_test_bridges, name="test-bridges", strict=True)
    reset_registry(registry)
    out = import_checkpoint(toy, tmp_path_factory.mktemp("stream-io-live") / "m", Parallelism())
    destroy_model_parallel()
    return stored_tensors(out / "iter_0000000")


def resolvers(monkeypatch) -> list:
    """Every PieceResolver made from now on, as it closes."""
    seen: list = []
    close = stream_reads.PieceResolver.close

    def keep(self):
        seen.append(self)
        close(self)

    monkeypatch.setattr(stream_reads.PieceResolver, "close", keep)
    return seen


# -- buffers -----------------------------------------------------------------------------------------
def test_a_pool_hands_a_given_back_storage_out_again_for_the_same_size():
    pool = BufferPool(cap=1 << 20)
    a = pool.take((4, 8), torch.bfloat16)
    assert a.is_contiguous() and a.untyped_storage().nbytes() == a.numel() * a.element_size()
    pointer = a.data_ptr()
    pool.give(a)
    b = pool.take((8, 4), torch.float16)  # the same bytes, another shape and dtype
    assert b.data_ptr() == pointer and b.shape == (8, 4) and b.dtype == torch.float16
    assert pool.take((4, 8), torch.bfloat16).data_ptr() != pointer  # taken: not handed out twice
    assert (pool.made, pool.reused) == (2, 1)


def test_a_pool_over_its_cap_empties_the_oldest_storages_even_if_still_referenced():
    pool = BufferPool(cap=3000)
    tensors = [pool.take((1000,), torch.uint8) for _ in range(4)]
    for t in tensors:
        pool.give(t)  # the list keeps a reference, as torch's writer does
    assert [t.untyped_storage().nbytes() for t in tensors] == [0, 1000, 1000, 1000]
    big = pool.take((4000,), torch.uint8)
    pool.give(big)  # larger than the cap: freed at once
    assert big.untyped_storage().nbytes() == 0
    pool.clear()
    assert all(t.untyped_storage().nbytes() == 0 for t in tensors)


def test_writeback_of_a_file_it_cannot_flush_turns_itself_off(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        f.write(b"x" * 100)
        writeback = Writeback(f.fileno(), every=10)
        writeback.written(100)  # a regular file: started (or nothing, off Linux)
        assert writeback.started == (100 if writeback.call is not None else 0)
    read, write = os.pipe()
    try:
        on_pipe = Writeback(write)
        on_pipe.range(0, 10)
        assert on_pipe.call is None
    finally:
        os.close(read), os.close(write)


# -- rows straight into the stored pieces ------------------------------------------------------------
def test_a_piece_is_a_run_of_rows_only_when_it_is_one():
    class Param:
        full_shape = (6, 4)
        tensor = torch.empty(6, 4, device="meta")

    class FakeTask:
        param = Param()

    assert Piece(FakeTask(), (3, 4), (4, 1), 12).rows() == (3, 3)  # the second half (up of gate/up)
    assert Piece(FakeTask(), (6, 4), (4, 1), 0).rows() == (0, 6)
    assert Piece(FakeTask(), (6, 2), (4, 1), 2).rows() is None  # columns 2..3
    assert Piece(FakeTask(), (3, 4), (4, 1), 2).rows() is None  # not at a row boundary
    layout = [("gate", 0, 0, 3), ("up", 0, 3, 3)]
    assert clip(layout, 3, 3) == [("up", 0, 0, 3)]
    assert clip(layout, 2, 2) == [("gate", 2, 0, 1), ("up", 0, 1, 1)]


def test_the_streamed_import_reads_rows_straight_into_the_stored_pieces(toy, live, tmp_path, monkeypatch):
    seen = resolvers(monkeypatch)
    out = stream_import.stream_import(toy, tmp_path / "m", Parallelism())
    streamed = stored_tensors(out / "iter_0000000")
    assert sorted(streamed) == sorted(live)
    assert [k for k in live if not torch.equal(live[k], streamed[k])] == []
    (resolver,) = seen
    direct = {key for key, reads in resolver.reads.items() if reads is not None}
    for stored in ("embedding.word_embeddings.weight", "output_layer.weight"):  # padded rows: zeros
        assert any(k == stored for k, _ in direct)
    halves = [k for k in resolver.pieces if k[0] == "decoder.layers.mlp.linear_fc1.weight"]
    assert len(halves) == 8 and set(halves) <= direct  # gate and up of 4 layers, no joined copy
    assert resolver.direct == len(direct) and resolver.pool.reused > 0


def test_a_writer_asking_out_of_the_expected_order_gets_the_same_checkpoint(toy, live, tmp_path, monkeypatch):
    split = stream_import._split_by_size_and_type
    monkeypatch.setattr(
        stream_import, "_split_by_size_and_type", lambda n, items: [b[::-1] for b in split(n, items)][::-1]
    )
    monkeypatch.setattr(stream_reads, "AHEAD_BYTES", 1)  # one piece read ahead at a time
    out = stream_import.stream_import(toy, tmp_path / "m", Parallelism())
    streamed = stored_tensors(out / "iter_0000000")
    assert [k for k in live if not torch.equal(live[k], streamed[k])] == []


def test_a_nan_read_straight_into_a_piece_is_named_and_kept(toy, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "hf"
    folder.mkdir()
    for file in toy.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    (weights,) = folder.glob("*.safetensors")
    tensors = load_file(weights)
    tensors[UP][5, 7] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    seen = resolvers(monkeypatch)
    with caplog.at_level(logging.WARNING):
        out = stream_import.stream_import(folder, tmp_path / "m", Parallelism())
    warned = [r.getMessage() for r in caplog.records if "NaN or Inf" in r.getMessage()]
    assert len(warned) == 1 and warned[0].endswith(f"converted as they are: {UP}")
    fc1 = stored_tensors(out / "iter_0000000")["decoder.layers.mlp.linear_fc1.weight"]
    assert torch.isnan(fc1[2, LLAMA["intermediate_size"] + 5, 7]) and torch.isnan(fc1).sum() == 1
    assert seen[0].direct > 0


# -- boxes straight from the checkpoint's records ----------------------------------------------------
def test_the_piece_reader_reads_contiguous_boxes_straight_and_the_others_as_torch_does(tmp_path, monkeypatch):
    state = {"a": torch.randn(6, 5, 4), "b": torch.arange(24, dtype=torch.bfloat16).reshape(4, 6)}
    dcp.save(state, storage_writer=FileSystemWriter(tmp_path / "w"), no_dist=True)
    straight: Counter[bool] = Counter()
    read_direct = piece_reader._DirectReader._read_direct

    def count(self, *args):
        straight[ok := read_direct(self, *args)] += 1
        return ok

    monkeypatch.setattr(piece_reader._DirectReader, "_read_direct", count)
    boxes = [
        ("a", (2, 0, 0), (3, 5, 4)),  # whole rows
        ("a", (1, 2, 0), (1, 3, 4)),  # a run inside one row
        ("a", (0, 0, 1), (6, 5, 2)),  # cut on the last dim: not one run
        ("b", (0, 0), (4, 6)),
    ]
    requests = [(key, offset, torch.empty(shape, dtype=state[key].dtype)) for key, offset, shape in boxes]
    PieceReader(tmp_path / "w").read(requests)
    for key, offset, dest in requests:
        box = tuple(slice(o, o + n) for o, n in zip(offset, dest.shape))
        assert torch.equal(dest, state[key][box])
    assert straight == Counter({True: 3, False: 1})
    assert _contiguous_span((6, 5, 4), (1, 2, 0), (1, 3, 4)) == (1 * 20 + 2 * 4, 12)
    assert _contiguous_span((6, 5, 4), (0, 0, 1), (6, 5, 2)) is None
    assert _merged([(30, 40), (0, 10), (15, 20), (500, 600)], gap=10) == [(0, 20), (30, 40), (500, 600)]


def test_the_piece_reader_names_the_folder_of_a_record_cut_short(tmp_path):
    dcp.save({"a": torch.randn(64, 64)}, storage_writer=FileSystemWriter(tmp_path / "w"), no_dist=True)
    (data,) = (tmp_path / "w").glob("*.distcp")
    data.write_bytes(data.read_bytes()[:4096])  # inside the tensor's bytes
    with pytest.raises(CheckpointError, match=str(tmp_path / "w")):
        PieceReader(tmp_path / "w").read([("a", (0, 0), torch.empty(64, 64))])


# -- export: reused windows, shards fsynced in the background ----------------------------------------
def test_a_streamed_export_in_small_windows_and_shards_is_the_source(toy, tmp_path, monkeypatch):
    checkpoint = stream_import.stream_import(toy, tmp_path / "m", Parallelism())
    windows: list = []
    close = stream_export.CheckpointWindow.close

    def keep(self):
        windows.append(self)
        close(self)

    monkeypatch.setattr(stream_export.CheckpointWindow, "close", keep)
    out = stream_export.stream_export(checkpoint, tmp_path / "hf", max_shard_size="200KB", window=200_000)
    assert compare_hf_weights(toy, out) == []
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 3
    assert windows[0].reads > 3 and windows[0].pool.reused > 0


def test_a_shard_that_cannot_be_fsynced_fails_the_export_and_leaves_nothing(toy, tmp_path, monkeypatch):
    checkpoint = stream_import.stream_import(toy, tmp_path / "m", Parallelism())

    def fail(fd: int) -> None:
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream_export, "_fsync_close", fail)
    with pytest.raises(CheckpointError, match=str(tmp_path / "hf")):  # as a failed fsync in the foreground
        stream_export.stream_export(checkpoint, tmp_path / "hf", max_shard_size="200KB")
    assert not (tmp_path / "hf").exists()
