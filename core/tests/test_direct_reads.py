"""Direct reads: row layouts agree with the format transforms and splits they stand for, the loader
takes them only when they are trusted, and they fill parameters exactly as the general path does."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint
from bridge_core.conversion.direct import _hook_overridden, _layout_trusted, plan_reads
from bridge_core.conversion.groups import SplitGroup
from bridge_core.conversion.params import ParamInfo
from bridge_core.conversion.plan import Task
from bridge_core.conversion.row_reader import RowReader, chunked, read_rows, read_threads
from bridge_core.errors import CheckpointError, ConfigError
from bridge_core.mappings import (
    ColumnParallelMapping,
    FusedExpertMapping,
    FusedGatedExpertMapping,
    GatedMLPMapping,
    MappingContext,
    QKVMapping,
    ReplicatedMapping,
    RowParallelMapping,
    VocabParallelMapping,
)
from bridge_core.model.bridge import MegatronModelBridge

HEAD_DIM = 4


def assemble(mapping, hf: dict[str, torch.Tensor], ctx: MappingContext) -> torch.Tensor:
    """The full Megatron tensor built from ``hf_row_layout`` alone (uncovered rows zero)."""
    pieces = mapping.hf_row_layout({n: t.shape[0] for n, t in hf.items()}, ctx)
    out = torch.zeros(ctx.megatron_shape, dtype=next(iter(hf.values())).dtype)
    for name, hf_row, row, rows in pieces:
        out[row : row + rows] = hf[name][hf_row : hf_row + rows]
    return out


def from_ranges(full: torch.Tensor, ranges) -> torch.Tensor:
    return torch.cat([full[first : first + count] for first, count in ranges])


def attention_ctx(heads: int, groups: int, shape) -> MappingContext:
    config = SimpleNamespace(num_attention_heads=heads, num_query_groups=groups, kv_channels=HEAD_DIM)
    return MappingContext(config, SimpleNamespace(vocab_size=10), tuple(shape))


@pytest.mark.parametrize(("heads", "groups"), [(8, 4), (4, 4), (4, 1), (8, 2)])
@pytest.mark.parametrize("cols", [12, None])
def test_qkv_layout_and_shards_match_merge_and_split(heads, groups, cols):
    rest = () if cols is None else (cols,)
    q = torch.randn(heads * HEAD_DIM, *rest)
    k, v = torch.randn(groups * HEAD_DIM, *rest), torch.randn(groups * HEAD_DIM, *rest)
    m = QKVMapping("qkv", "q", "k", "v")
    hf = {"q": q, "k": k, "v": v}
    ctx = attention_ctx(heads, groups, ((heads + 2 * groups) * HEAD_DIM, *rest))
    full = m.hf_to_megatron(hf, ctx)
    assert torch.equal(assemble(m, hf, ctx), full)
    for n in (1, 2, groups) if groups > 1 else (1,):
        for i, shard in enumerate(m.split(full, n)):
            assert torch.equal(from_ranges(full, m.shard_rows(full.shape[0], n, i)), shard)


def test_qkv_layout_refuses_rows_that_do_not_fit_the_heads():
    m = QKVMapping("qkv", "q", "k", "v")
    ctx = attention_ctx(8, 4, (64, 12))
    assert m.hf_row_layout({"q": 30, "k": 16, "v": 16}, ctx) is None


@pytest.mark.parametrize("n", [1, 2, 4])
def test_gated_layout_and_shards_match_cat_and_split_gated(n):
    m = GatedMLPMapping("fc1", "gate", "up")
    hf = {"gate": torch.randn(16, 6), "up": torch.randn(16, 6)}
    ctx = MappingContext(None, None, (32, 6))
    full = m.hf_to_megatron(hf, ctx)
    assert torch.equal(assemble(m, hf, ctx), full)
    for i, shard in enumerate(m.split(full, n)):
        assert torch.equal(from_ranges(full, m.shard_rows(32, n, i)), shard)


def test_vocab_layout_leaves_the_padding_zero_and_plain_mappings_are_the_identity():
    emb = torch.randn(10, 6)
    m = VocabParallelMapping("emb", "e")
    ctx = MappingContext(None, SimpleNamespace(vocab_size=10), (16, 6))
    assert torch.equal(assemble(m, {"e": emb}, ctx), m.hf_to_megatron(emb, ctx))
    for cls in (ColumnParallelMapping, ReplicatedMapping):
        m = cls("w", "w")
        full = torch.randn(8, 6)
        assert torch.equal(assemble(m, {"w": full}, MappingContext(None, None, (8, 6))), full)
        for n in (1, 2):
            for i, shard in enumerate(m.split(full, n)):
                assert torch.equal(from_ranges(full, m.shard_rows(8, n, i)), shard)
    assert RowParallelMapping("w", "w").shard_rows(8, 2, 0) is None  # columns: not whole rows


def test_layouts_are_trusted_only_from_the_class_that_defines_the_transform():
    class Transposing(ColumnParallelMapping):
        def hf_to_megatron(self, hf_weights, ctx):
            return hf_weights.t().contiguous()

    class OwnSplit(ColumnParallelMapping):
        def split(self, full, n):
            return list(reversed(torch.chunk(full, n)))

    for cls in (ColumnParallelMapping, VocabParallelMapping, QKVMapping, GatedMLPMapping, ReplicatedMapping):
        assert _layout_trusted(cls), cls
    for cls in (Transposing, OwnSplit, FusedExpertMapping, FusedGatedExpertMapping):
        assert not _layout_trusted(cls), cls


def test_a_bridge_that_modifies_loaded_weights_keeps_the_general_path():
    class Dequantizing(MegatronModelBridge):
        def maybe_modify_loaded_hf_weight(self, hf_param, hf_state_dict):
            return super().maybe_modify_loaded_hf_weight(hf_param, hf_state_dict)

    assert _hook_overridden(Dequantizing.__new__(Dequantizing))
    assert not _hook_overridden(MegatronModelBridge.__new__(MegatronModelBridge))


@pytest.fixture
def source(tmp_path) -> SafetensorsCheckpoint:
    tensors = {
        "gate": torch.randn(16, 6, dtype=torch.bfloat16),
        "up": torch.randn(16, 6, dtype=torch.bfloat16),
        "emb": torch.randn(10, 6, dtype=torch.bfloat16),
        "norm": torch.randn(6, dtype=torch.bfloat16),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    return SafetensorsCheckpoint(tmp_path)


def task_for(mapping, shape, full_shape, dtype=torch.bfloat16, device="cpu") -> Task:
    param = torch.full(shape, 7.0, dtype=dtype, device=device)  # not zeros: the padding must be written
    info = ParamInfo("p", "p", 0, shape, full_shape, dtype, mapping.tp_dim, 1, False, param)
    return Task(info, mapping)


def bridge_stub():
    return SimpleNamespace(hf_config=SimpleNamespace(vocab_size=10))


@pytest.mark.parametrize(("n", "index"), [(1, 0), (2, 0), (2, 1), (4, 3)])
def test_each_rank_reads_exactly_its_own_shard(source, n, index):
    group = SplitGroup(None, n, index, 0, True)
    cases = [
        (GatedMLPMapping("p", "gate", "up"), (32, 6), lambda: torch.cat([source["gate"], source["up"]])),
        (VocabParallelMapping("p", "emb"), (16, 6), lambda: torch.cat([source["emb"], torch.zeros(6, 6)])),
    ]
    for mapping, full_shape, full in cases:
        expected = mapping.split(full().to(torch.bfloat16), n)[index]
        task = task_for(mapping, tuple(expected.shape), full_shape)
        reads = plan_reads(task, bridge_stub(), source, None, group)
        assert reads is not None
        done = read_rows(source, reads, task.param.tensor)
        assert torch.equal(task.param.tensor, expected), mapping
        assert done == sum(r[3] for r in reads) * 6 * 2


def test_a_dtype_or_shape_the_file_does_not_hold_takes_the_general_path(source):
    group = SplitGroup(None, 1, 0, 0, True)
    fp32 = task_for(ReplicatedMapping("p", "norm"), (6,), (6,), dtype=torch.float32)
    assert plan_reads(fp32, bridge_stub(), source, None, group) is None
    stacked = task_for(ColumnParallelMapping("p", "emb"), (10, 6), (10, 6))
    stacked.mapping.index = 0
    assert plan_reads(stacked, bridge_stub(), source, None, group) is None
    assert plan_reads(task_for(ReplicatedMapping("p", "norm"), (6,), (6,)), bridge_stub(), {}, None, group) is None
    on_device = task_for(ReplicatedMapping("p", "norm"), (6,), (6,), device="meta")  # not host memory
    assert plan_reads(on_device, bridge_stub(), source, None, group) is None
    row = task_for(RowParallelMapping("p", "gate"), (16, 3), (16, 6))
    assert plan_reads(row, bridge_stub(), source, None, SplitGroup(None, 2, 0, 0, True)) is None


def test_read_rows_into_reads_rows_and_refuses_what_does_not_fit(source):
    out = torch.empty(4, 6, dtype=torch.bfloat16)
    assert source.read_rows_into("emb", 3, out) == 48
    assert torch.equal(out, source["emb"][3:7])
    with pytest.raises(ValueError, match=r"emb"):
        source.read_rows_into("emb", 8, out)  # past the last row
    with pytest.raises(ValueError, match=r"float32"):
        source.read_rows_into("emb", 0, torch.empty(2, 6))
    with pytest.raises(ValueError, match=r"emb"):
        source.read_rows_into("emb", 0, torch.empty(6, 4, dtype=torch.bfloat16).t())  # not contiguous


def test_reader_threads_follow_the_setting_and_refuse_nonsense(monkeypatch):
    monkeypatch.setenv("BRIDGE_READ_THREADS", "3")
    assert read_threads() == 3
    for bad in ("many", "0", "-2"):
        monkeypatch.setenv("BRIDGE_READ_THREADS", bad)
        with pytest.raises(ConfigError, match=f"BRIDGE_READ_THREADS='{bad}'"):
            read_threads()
    monkeypatch.delenv("BRIDGE_READ_THREADS")
    assert 1 <= read_threads() <= 4
    assert read_threads() <= read_threads(torch.device("cuda")) <= 16  # into GPU memory: copies, not faults


def test_chunks_cover_every_row_once_within_the_limit():
    reads = [("a", 3, 0, 7), ("b", 0, 7, 1), ("c", 10, 8, 5)]
    pieces = chunked(reads, row_bytes=12, limit=36)  # three rows a chunk
    assert all(rows <= 3 for *_, rows in pieces)
    rows = [(n, h + i, loc + i) for n, h, loc, count in pieces for i in range(count)]
    assert rows == [(n, h + i, loc + i) for n, h, loc, count in reads for i in range(count)]
    assert chunked(reads, row_bytes=100, limit=36) == [p for r in reads for p in chunked([r], 100, 1)]  # a row each


# 24 bytes: two rows a chunk; 8 bytes, less than a 12-byte row: each row gets a buffer of its own
@pytest.mark.parametrize(("threads", "chunk"), [(1, 24), (2, 24), (3, 8)])
def test_staged_reads_reuse_a_bounded_pool_and_fill_what_direct_reads_fill(source, threads, chunk):
    reader = RowReader(threads, staged=True, chunk_bytes=chunk)
    emb = VocabParallelMapping("p", "emb")
    group = SplitGroup(None, 1, 0, 0, True)
    gated = task_for(GatedMLPMapping("p", "gate", "up"), (32, 6), (32, 6))
    tasks = [task_for(emb, (16, 6), (16, 6)) for _ in range(3)] + [gated]
    for task in tasks:
        reader.submit(source, plan_reads(task, bridge_stub(), source, None, group), task.param.tensor)
    assert [n for n, _ in reader.finished(wait=True)] == [120, 120, 120, 384]
    reader.close()
    padded = torch.cat([source["emb"], torch.zeros(6, 6, dtype=torch.bfloat16)])
    assert all(torch.equal(t.param.tensor, padded) for t in tasks[:3])
    assert torch.equal(tasks[3].param.tensor, torch.cat([source["gate"], source["up"]]))
    assert reader._staging._left >= 0 and reader._staging._free.qsize() == threads + 2 - reader._staging._left


@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_reads_fill_in_order_and_a_failed_read_is_raised(source, tmp_path, threads):
    reader = RowReader(threads)
    params = [torch.empty(16, 6, dtype=torch.bfloat16) for _ in range(4)]
    for i, p in enumerate(params):
        reader.submit(source, [("gate" if i % 2 else "up", 0, 0, 16)], p)
    done = reader.finished(wait=True)
    assert done == [(192, 192)] * 4
    assert all(torch.equal(p, source["gate" if i % 2 else "up"]) for i, p in enumerate(params))
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: 8 + int.from_bytes(data[:8], "little")])  # the data went after the header check
    reader.submit(source, [("norm", 0, 0, 6)], torch.empty(6, dtype=torch.bfloat16))
    with pytest.raises(CheckpointError, match="truncated"):
        reader.finished(wait=True)
    reader.close()
