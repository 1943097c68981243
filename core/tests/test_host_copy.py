"""Device-to-host copies of exported tensors: order, values, pass-through on CPU, the batching of small
tensors (``partition``, ``layout``), the batched copy run on CPU tensors, and the reusable pool."""

import random

import pytest
import torch

from bridge_core.conversion import host_copy
from bridge_core.conversion.host_copy import ALIGN, PinnedPool, layout, partition, to_host
from bridge_core.errors import ConfigError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _items(device: str) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=gen).to(torch.bfloat16)
    return [
        ("a", base.to(device)),
        ("b.view", base.to(device)[2:4]),  # a view: copied as its own values only
        ("c.transposed", base.to(device).t()),  # non-contiguous
        ("d.fp32", torch.arange(5, dtype=torch.float32, device=device)),
        ("e.empty", torch.empty(0, 3, device=device)),
    ]


def _moe_like(device: str, experts: int = 24, seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Many small tensors of mixed dtypes and shapes, with a few large ones between them."""
    gen = torch.Generator().manual_seed(seed)
    out = [("embed", torch.randn(300, 64, generator=gen).to(torch.bfloat16))]  # 38,400 bytes: alone
    for e in range(experts):
        out.append((f"e{e}.gate", torch.randn(8, 16, generator=gen).to(torch.bfloat16)))
        out.append((f"e{e}.up", torch.randn(16, 8, generator=gen).to(torch.bfloat16).t()))  # non-contiguous
        out.append((f"e{e}.bias", torch.randn(7, generator=gen)))  # fp32, odd size: padded
        if e % 8 == 3:
            out.append((f"e{e}.big", torch.randn(100, 100, generator=gen)))  # 40,000 bytes: alone
    out += [
        ("norm.nan", torch.tensor([float("nan"), float("-inf"), 1.5], dtype=torch.float16)),
        ("scalar", torch.tensor(3.25, dtype=torch.float64)),  # 0-d
        ("count", torch.arange(5, dtype=torch.int64)),
        ("mask", torch.tensor([True, False, True])),
        ("empty", torch.empty(0, 3)),
        ("slice", torch.randn(10, 10, generator=gen)[3:5]),  # a view of a larger tensor
    ]
    return [(n, t.to(device)) for n, t in out]


def _same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape or got.device.type != "cpu":
        return False
    return torch.equal(got.reshape(-1).view(torch.uint8), want.cpu().reshape(-1).view(torch.uint8))


def test_cpu_tensors_pass_through_in_order():
    items = _items("cpu")
    out = list(to_host(iter(items)))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (_, got), (_, want) in zip(out, items):
        assert got.data_ptr() == want.data_ptr()  # no copy on the CPU path


# -- partition and layout (pure) ---------------------------------------------------------------------


def test_partition_fills_batches_in_order_and_pads_each_tensor_to_the_alignment():
    # offsets 0, 64, 128, 192: four fit in 256 bytes; the fifth (at 256) starts the next batch
    assert list(partition([10] * 5, batch_bytes=256, small_bytes=100)) == [[0, 1, 2, 3], [4]]
    assert list(partition([64] * 4, batch_bytes=256, small_bytes=100)) == [[0, 1, 2, 3]]
    assert list(partition([65, 65], batch_bytes=193, small_bytes=100)) == [[0, 1]]  # at 0 and 128
    assert list(partition([65, 65], batch_bytes=192, small_bytes=100)) == [[0], [1]]
    assert list(partition([], batch_bytes=256, small_bytes=100)) == []


def test_partition_sends_a_large_or_unbatched_tensor_alone_and_ends_the_batch_before_it():
    sizes = [10, 20, 101, 30, None, 40, 100, 5000, 0]
    assert list(partition(sizes, batch_bytes=256, small_bytes=100)) == [[0, 1], [2], [3], [4], [5, 6], [7], [8]]
    # a small-tensor threshold above the batch is the batch
    assert list(partition([200, 300], batch_bytes=256, small_bytes=1000)) == [[0], [1]]


def test_partition_covers_every_index_once_in_order_within_the_caps():
    rng = random.Random(0)
    for _ in range(200):
        batch, small = rng.choice([128, 256, 1000]), rng.choice([1, 50, 128, 400])
        sizes = [rng.choice([None, 0, 1, 7, 63, 64, 65, 100, 127, 128, 300, 999]) for _ in range(rng.randrange(30))]
        groups = list(partition(sizes, batch_bytes=batch, small_bytes=small))
        assert [i for g in groups for i in g] == list(range(len(sizes)))
        batched = {i for i, s in enumerate(sizes) if s is not None and s <= min(small, batch)}.__contains__
        for g in groups:
            assert len(g) == 1 or (all(batched(i) for i in g) and layout([sizes[i] for i in g])[1] <= batch)
        for a, b in zip(groups, groups[1:]):  # two batches in a row: the first was cut because the next did not fit
            if all(batched(i) for i in a + b[:1]):
                assert layout([sizes[i] for i in a + b[:1]])[1] > batch


def test_partition_reads_its_sizes_one_ahead_at_most():
    read = []

    def sizes():
        for i, size in enumerate([10, 10, 500, 10, 10, 10, 10, 10]):
            read.append(i)
            yield size

    seen = []
    for group in partition(sizes(), batch_bytes=192, small_bytes=100):
        assert len(read) <= group[-1] + 2  # the group's last index, and the one that closed it
        seen.append(group)
    assert seen == [[0, 1], [2], [3, 4, 5], [6, 7]]


def test_layout_aligns_every_offset_and_never_overlaps():
    offsets, end = layout([3, 0, 64, 65, 1])
    assert offsets == [0, ALIGN, ALIGN, 2 * ALIGN, 4 * ALIGN] and end == 4 * ALIGN + 1
    assert layout([]) == ([], 0)


# -- the batched copy, run on CPU tensors ------------------------------------------------------------


def _copy_all(items, pool, **kwargs):
    """Every tensor through the copy path (CPU ones too), in batches of at most 1 KiB, one in flight."""
    kwargs = {"batch_bytes": 1024, "small_bytes": 512, "in_flight_bytes": 0, "transfer": lambda t: True, **kwargs}
    return to_host(iter(items), pool=pool, **kwargs)


def _drain(stream) -> None:
    for _ in stream:  # the consumer of a weight sync: uses each tensor, then lets it go
        pass


@pytest.mark.parametrize("in_flight", [0, 100, 1 << 20])
def test_the_batched_copy_yields_bit_identical_tensors_in_order(in_flight):
    items = _moe_like("cpu")
    pool = PinnedPool(block_bytes=1024, max_bytes=64 * 1024, pin=False)  # room for every batch
    out = list(_copy_all(items, pool, in_flight_bytes=in_flight))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (name, got), (_, want) in zip(out, items):
        assert _same_bits(got, want), name
        if want.numel():
            assert got.data_ptr() != want.data_ptr()  # a copy, never the source
    blocks = [(b.data_ptr(), b.data_ptr() + b.numel()) for b, _ in pool.blocks]
    small = [t for (_, t), (_, w) in zip(out, items) if 0 < w.numel() * w.element_size() <= 512]
    assert small and all(any(lo <= t.data_ptr() < hi for lo, hi in blocks) for t in small)  # views of blocks
    for _, got in out:
        if got.numel():
            assert got.data_ptr() % got.element_size() == 0 and got.is_contiguous()


def test_the_pool_is_reused_across_exports_when_nothing_is_kept():
    pool = PinnedPool(block_bytes=1024, max_bytes=8 * 1024, pin=False)
    first = [(n, t.clone()) for n, t in _copy_all(_moe_like("cpu", seed=1), pool)]
    allocated, blocks = pool.allocated, [b.data_ptr() for b, _ in pool.blocks]
    assert 0 < len(blocks) <= 8 and allocated == len(blocks)
    again = _moe_like("cpu", seed=2)
    second = [(n, t.clone()) for n, t in _copy_all(again, pool)]
    _drain(_copy_all(again, pool))
    assert pool.allocated == allocated and [b.data_ptr() for b, _ in pool.blocks] == blocks  # not reallocated
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(second, again))
    assert not all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second) if a.numel())


def test_tensors_kept_from_an_export_are_never_overwritten_by_the_next():
    pool = PinnedPool(block_bytes=1024, max_bytes=4 * 1024, pin=False)
    before = _moe_like("cpu", seed=3)
    kept = list(_copy_all(before, pool))  # every block stays viewed
    allocated = pool.allocated
    after = _moe_like("cpu", seed=4)
    out = list(_copy_all(after, pool))
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(kept, before))
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(out, after))
    assert pool.allocated > allocated and len(pool.blocks) == 4  # the second export took one-off blocks


def test_a_block_comes_back_once_its_last_view_is_dropped_even_a_derived_one():
    pool = PinnedPool(block_bytes=1024, max_bytes=1024, pin=False)
    items = [("a", torch.arange(8, dtype=torch.float32)), ("b", torch.arange(4, dtype=torch.int64))]
    out = dict(_copy_all(items, pool))
    derived = out["a"][2:].view(torch.int32)  # the consumer's own view of a yielded tensor
    del out
    list(_copy_all(items, pool))
    assert pool.allocated == 2  # the only block was still viewed: a one-off block
    assert torch.equal(derived, torch.arange(8, dtype=torch.float32)[2:].view(torch.int32))
    del derived
    _drain(_copy_all(items, pool))
    assert pool.allocated == 2  # free again: reused


def test_an_export_closed_early_leaves_the_pool_usable():
    pool = PinnedPool(block_bytes=1024, max_bytes=4 * 1024, pin=False)
    stream = _copy_all(_moe_like("cpu"), pool)
    next(stream), next(stream)
    stream.close()
    items = _moe_like("cpu", seed=5)
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(_copy_all(items, pool), items))


def test_no_pool_still_copies_every_batch(monkeypatch):
    monkeypatch.setenv(host_copy.POOL_ENV, "0")
    pool = PinnedPool(block_bytes=1024, pin=False)
    assert pool.max_blocks == 0
    items = _moe_like("cpu")
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(_copy_all(items, pool), items))
    assert pool.blocks == [] and pool.allocated > 0


def test_reserve_allocates_up_front_within_the_cap():
    pool = PinnedPool(block_bytes=1024, max_bytes=3 * 1024, pin=False)
    pool.reserve(10 * 1024)
    assert len(pool.blocks) == 3 and pool.allocated == 3
    _drain(_copy_all(_moe_like("cpu"), pool))
    assert pool.allocated == 3


@pytest.mark.parametrize("value", ["lots", "-1", "1.5"])
def test_a_bad_pool_setting_is_a_one_line_error_naming_it(monkeypatch, value):
    monkeypatch.setenv(host_copy.POOL_ENV, value)
    with pytest.raises(ConfigError, match=f"{host_copy.POOL_ENV}='{value}'"):
        PinnedPool()


def test_unpinned_copies_and_cpu_tensors_between_batches_keep_the_order():
    items = _moe_like("cpu", experts=6)
    moved = {n for i, (n, _) in enumerate(items) if i % 5}  # every fifth tensor passes through
    pool = PinnedPool(block_bytes=1024, max_bytes=4 * 1024, pin=False)
    kw = {"batch_bytes": 1024, "small_bytes": 512, "pool": pool}
    by_name = {id(t): n for n, t in items}
    out = list(to_host(iter(items), transfer=lambda t: by_name[id(t)] in moved, **kw))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (name, got), (_, want) in zip(out, items):
        assert _same_bits(got, want)
        if want.numel():
            assert (got.data_ptr() == want.data_ptr()) == (name not in moved)
    unpinned = list(to_host(iter(items), pin_memory=False, transfer=lambda t: True, **kw))
    assert all(got.data_ptr() == want.data_ptr() for (_, got), (_, want) in zip(unpinned, items))


# -- on the GPU ----------------------------------------------------------------------------------------


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("pin", "in_flight"), [(True, None), (True, 0), (True, 100), (False, None)])
def test_cuda_tensors_arrive_on_host_bit_exact_in_order(pin, in_flight):
    items = _items("cuda")
    out = list(to_host(iter(items), pin_memory=pin, in_flight_bytes=in_flight))
    assert [n for n, _ in out] == [n for n, _ in items]
    for (_, got), (_, want) in zip(out, items):
        assert got.device.type == "cpu" and got.dtype == want.dtype and got.shape == want.shape
        if pin and got.numel():
            assert got.is_pinned()
        assert torch.equal(got, want.cpu())


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("in_flight", [None, 0, 4096])
def test_cuda_batches_are_bit_exact_against_cpu_and_reuse_the_pinned_pool(in_flight):
    pool = PinnedPool(block_bytes=1024, max_bytes=128 * 1024, pin=True)
    kw = {"in_flight_bytes": in_flight, "batch_bytes": 1024, "small_bytes": 512, "pool": pool}
    for seed in (0, 1):
        items = _moe_like("cuda", experts=64, seed=seed)
        want = [(n, t.cpu()) for n, t in items]
        got = list(to_host(iter(items), **kw))
        assert [n for n, _ in got] == [n for n, _ in want]
        assert all(_same_bits(g, w) for (_, g), (_, w) in zip(got, want))
        assert all(g.is_pinned() for _, g in got if g.numel())
        if seed == 0:
            allocated, blocks = pool.allocated, len(pool.blocks)
            assert allocated == blocks <= pool.max_blocks  # every batch in a block of the pool (no one-off)
        del got
    assert pool.allocated == allocated and len(pool.blocks) == blocks  # the second export reused them


@pytest.mark.gpu
@cuda
def test_cuda_default_sizes_on_expert_shaped_tensors_match_a_plain_cpu_copy():
    gen = torch.Generator(device="cuda").manual_seed(0)
    items = [(f"e{i}", torch.randn(96, 2048, device="cuda", generator=gen).to(torch.bfloat16)) for i in range(200)]
    items.insert(50, ("big", torch.randn(1024, 4096, device="cuda", generator=gen)))  # 16 MiB: alone
    want = [(n, t.cpu()) for n, t in items]
    got = list(to_host(iter(items)))
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(_same_bits(g, w) for (_, g), (_, w) in zip(got, want))
    stream = to_host(iter(items))
    next(stream)
    stream.close()  # every transfer in flight is waited for


def test_a_batch_is_split_where_the_device_changes():
    a, b, c = torch.zeros(2), torch.zeros(2, device="meta"), torch.zeros(2)
    runs = host_copy._by_device([("a", a), ("b", b), ("c", c), ("d", c)])
    assert [[n for n, _ in run] for run in runs] == [["a"], ["b"], ["c", "d"]]


def test_the_whole_pool_is_allocated_before_the_first_batch():
    pool = PinnedPool(block_bytes=1024, max_bytes=6 * 1024, pin=False)
    stream = _copy_all(_moe_like("cpu"), pool)
    next(stream)  # the embedding goes alone; the batches behind it are queued already
    assert len(pool.blocks) == 6 and pool.allocated == 6
    _drain(stream)
    assert pool.allocated == 6  # nothing grown during the export
