"""The export's per-tensor bookkeeping made cheaper (issue 19): the memo of mapping lookups, the cached
natural order, the NaN/Inf scan read once at the end, the cast that needs none."""

from __future__ import annotations

import pytest
import torch

from bridge_core.conversion import tasks as tasks_module
from bridge_core.conversion.finite import NonfiniteScan, checked_cast
from bridge_core.conversion.params import ParamInfo
from bridge_core.conversion.tasks import build_tasks, natural_key
from bridge_core.errors import CoverageError
from bridge_core.mappings import AutoMapping, ReplicatedMapping
from bridge_core.model.mapping_registry import MegatronMappingRegistry


def _param(name: str) -> ParamInfo:
    return ParamInfo(name, name, 0, (4,), (4,), torch.float32, None, 1, ".experts." in name, torch.zeros(4))


def _registry(*extra) -> MegatronMappingRegistry:
    return MegatronMappingRegistry(
        ReplicatedMapping("decoder.layers.*.input_layernorm.weight", "model.layers.*.input_layernorm.weight"),
        AutoMapping(
            "decoder.layers.*.mlp.experts.local_experts.*.linear_fc2.weight", "model.layers.*.mlp.experts.*.down"
        ),
        *extra,
    )


NAMES = [f"decoder.layers.{i}.input_layernorm.weight" for i in range(3)] + [
    f"decoder.layers.{i}.mlp.experts.local_experts.{e}.linear_fc2.weight" for i in range(2) for e in range(4)
]


def _bound(tasks):
    return [(t.param.global_name, type(t.mapping).__name__, t.mapping.hf_param, t.mapping.index) for t in tasks]


def test_memoised_lookups_bind_exactly_what_the_registry_binds(monkeypatch):
    monkeypatch.setattr(tasks_module, "_MATCHES", type(tasks_module._MATCHES)())
    params = [_param(n) for n in NAMES]
    want = [(n, type(m).__name__, m.hf_param, m.index) for n in NAMES if (m := _registry().megatron_to_hf_lookup(n))]
    first = _bound(build_tasks(params, _registry(), tied=False, owner="x"))
    again = build_tasks(params, _registry(), tied=False, owner="x")  # a new registry, the same patterns: memo hits
    assert sorted(first) == sorted(want) and _bound(again) == first
    assert len(tasks_module._MATCHES) == 1
    # the bound mappings are fresh copies: changing one (build_tasks sets tp_dim on some) changes no other
    again[0].mapping.tp_dim = 5
    assert build_tasks(params, _registry(), tied=False, owner="x")[0].mapping.tp_dim is None


def test_memoised_lookups_still_refuse_unmapped_and_ambiguous_names(monkeypatch):
    monkeypatch.setattr(tasks_module, "_MATCHES", type(tasks_module._MATCHES)())
    stray = _param("decoder.layers.0.mystery.weight")
    for _ in range(2):  # the second time from the memo
        with pytest.raises(CoverageError, match="decoder.layers.0.mystery.weight"):
            build_tasks([_param(NAMES[0]), stray], _registry(), tied=False, owner="x")
    twice = ReplicatedMapping("decoder.layers.1.input_layernorm.weight", "other")  # matches NAMES[1] too
    for _ in range(2):
        with pytest.raises(CoverageError, match="matched by several mappings"):
            build_tasks([_param(NAMES[1])], _registry(twice), tied=False, owner="x")
    build_tasks([_param(NAMES[1])], _registry(), tied=False, owner="x")  # the other pattern set: fine


def test_the_memo_keeps_a_few_pattern_sets(monkeypatch):
    monkeypatch.setattr(tasks_module, "_MATCHES", type(tasks_module._MATCHES)())
    for i in range(tasks_module._MATCH_SETS + 3):
        extra = ReplicatedMapping(f"extra{i}.weight", f"extra{i}")
        build_tasks([_param(NAMES[0])], _registry(extra), tied=False, owner="x")
    assert len(tasks_module._MATCHES) == tasks_module._MATCH_SETS


def test_natural_key_is_cached_and_unchanged():
    names = ["decoder.layers.10.x", "output_layer.weight", "decoder.layers.9.x", "embedding.word_embeddings.weight"]
    assert sorted(names, key=natural_key) == [names[3], names[2], names[0], names[1]]
    hits = natural_key.cache_info().hits
    assert natural_key(names[0]) is natural_key(names[0]) and natural_key.cache_info().hits > hits


def test_the_nonfinite_scan_reads_mixed_dtypes_at_once_and_names_in_order():
    scan = NonfiniteScan()
    scan.add(torch.tensor([1.0, float("inf")], dtype=torch.float16), "half.inf")
    scan.add(torch.tensor([1.0, 2.0], dtype=torch.bfloat16), "bf16.ok")
    scan.add(torch.tensor([float("nan")], dtype=torch.float64), "f64.nan", "f64.nan.pair")
    scan.add(torch.tensor([-float("inf"), 0.0]), "f32.neg")
    scan.add(torch.tensor([3.0e38, -3.0e38]), "f32.large")  # finite: no false alarm from the promotion
    assert scan.names() == ["half.inf", "f64.nan", "f64.nan.pair", "f32.neg"]
    assert scan.names() == ["half.inf", "f64.nan", "f64.nan.pair", "f32.neg"]  # asking again changes nothing


def test_a_cast_to_the_same_dtype_is_the_tensor_itself():
    t = torch.arange(4.0)
    assert checked_cast(t, torch.float32, "t") is t
    assert checked_cast(t, torch.bfloat16, "t").dtype == torch.bfloat16


def test_deferred_casts_check_a_cpu_tensor_at_once():
    from bridge_core.conversion.finite import DeferredCasts
    from bridge_core.errors import ConfigError

    casts = DeferredCasts()
    with pytest.raises(ConfigError, match="big: casting torch.float32 to torch.float16 overflows"):
        casts.cast(torch.tensor([1e6, 1.0]), torch.float16, "big")
    assert casts.cast(torch.tensor([1.0]), torch.float16, "ok").dtype == torch.float16
    casts.check()  # nothing waits


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_deferred_casts_on_the_gpu_raise_at_the_check_with_the_same_message():
    from bridge_core.conversion.finite import DeferredCasts
    from bridge_core.errors import ConfigError

    casts = DeferredCasts()
    fine = casts.cast(torch.tensor([1.0, -2.0], device="cuda"), torch.float16, "fine")
    assert fine.dtype == torch.float16 and fine.device.type == "cuda"
    casts.check()
    casts.cast(torch.tensor([1e-30, 0.0], device="cuda"), torch.float16, "tiny")
    casts.cast(torch.tensor([1e6, 1.0], device="cuda"), torch.float16, "big")
    with pytest.raises(ConfigError, match=r"tiny: casting .* into all zeros \(underflow\)"):
        casts.check()
    other = DeferredCasts()
    other.cast(torch.tensor([1e6, 1.0], device="cuda", dtype=torch.float64), torch.bfloat16, "wide")  # fits bf16
    other.cast(torch.tensor([-7e4], device="cuda"), torch.float16, "neg")
    with pytest.raises(ConfigError, match="neg: casting torch.float32 to torch.float16 overflows .*7e"):
        other.check()


@pytest.mark.gpu
@cuda
def test_the_grouped_gpu_scan_finds_every_nan_and_inf_wherever_it_sits():
    gen = torch.Generator(device="cuda").manual_seed(0)
    scan, want = NonfiniteScan(), []
    for i in range(300):
        dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
        numel = (1, 7, 5000, 65536, 65537, 300_000)[i % 6]
        t = torch.randn(numel, device="cuda", generator=gen).to(dtype)
        if i % 4:
            t[(i * 7919) % numel] = (float("nan"), float("inf"), float("-inf"))[i % 3]
            want.append(f"t{i}")
        scan.add(t.view(1, -1) if i % 5 == 0 else t, f"t{i}")
    scan.add(torch.full((17 << 20,), float("nan"), device="cuda"), "big")  # 68 MiB: its group is flushed at once
    want.append("big")
    cpu = NonfiniteScan()
    cpu.add(torch.tensor([float("nan")]), "on.cpu")
    assert scan.names() == want and cpu.names() == ["on.cpu"]
