"""The export plan and the weight-sync plan for RL refits (CPU; the multi-rank layouts on gloo).

In one process: the plan lists exactly what an export yields, a cached plan exports the same bits
without planning again, buckets respect their bound, bad plans and settings are one-line errors.
In one torchrun launch (``_weight_sync_dist_script.py``): the same at TP=2, PP=2, EP=2 and TP=2 over
experts, and the shard geometry against the real shards.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import _test_bridges
import pytest
import torch

from bridge_core import AutoBridge
from bridge_core.conversion.export_plan import ExportPlan, Unit
from bridge_core.conversion.weight_sync import Bucket, plan_buckets
from bridge_core.errors import ConfigError, CoverageError
from bridge_core.plugins.discovery import reset_registry
from bridge_core.plugins.registry import Registry
from bridge_core.runtime.parallel import destroy_model_parallel
from bridge_core.testing.launch import torchrun
from bridge_core.testing.toy import ToyModel, build_toy
from bridge_core.testing.toys import TINY_LLAMA

HERE = Path(__file__).parent
LLAMA = {**TINY_LLAMA, "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 1000}
MOE = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 24,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "moe_intermediate_size": 40,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
    "vocab_size": 515,
    "max_position_embeddings": 256,
}
F32 = torch.float32


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


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> Path:
    per_expert = build_toy(ToyModel("Qwen3MoeForCausalLM", MOE), tmp_path_factory.mktemp("moe"))
    return _test_bridges.stack_experts(per_expert, tmp_path_factory.mktemp("stacked"), MOE["num_experts"])


def convert(path: Path):
    bridge = AutoBridge.from_hf_pretrained(path)
    provider = bridge.to_megatron_provider()
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    return bridge, model


# -- the export plan, pure -------------------------------------------------------------------------


def unit(name: str, owner: int, *parts) -> Unit:
    return Unit(name, owner, tuple(parts))


def test_a_parameter_exported_by_two_ranks_is_refused():
    a = unit("decoder.layers.0.mlp.linear_fc2.weight", 0, ("w", None, (2, 2), F32))
    with pytest.raises(CoverageError, match="exported by ranks 0 and 1"):
        ExportPlan.from_rank_units([[a], [Unit(a.global_name, 1, a.parts)]])


def test_replicated_units_are_those_every_rank_of_several_holds_whole():
    a = unit("decoder.final_layernorm.weight", 0, ("model.norm.weight", None, (2,), F32))
    b = unit("decoder.layers.0.mlp.experts.linear_fc2.weight0", 1, ("e", 0, (2, 2), F32))
    whole = [[a.global_name, "embedding.word_embeddings.weight"], [a.global_name, b.global_name]]
    assert ExportPlan.from_rank_units([[a], [b]], whole).replicated == {a.global_name}
    assert ExportPlan.from_rank_units([[a], [b]]).replicated == set()
    assert ExportPlan.from_rank_units([[a, b]], [[a.global_name, b.global_name]]).replicated == set()  # one rank


def test_stacked_slices_run_back_to_back_and_come_out_with_their_count():
    fc1 = [
        unit(f"decoder.layers.0.mlp.experts.local_experts.{e}.linear_fc1.weight", e % 2, ("up", e, (4, 2), F32))
        for e in range(2)
    ]
    fc2 = [
        unit(f"decoder.layers.0.mlp.experts.local_experts.{e}.linear_fc2.weight", e % 2, ("down", e, (2, 2), F32))
        for e in range(2)
    ]
    norm = unit("decoder.layers.0.pre_mlp_layernorm.weight", 0, ("norm", None, (2,), F32))
    plan = ExportPlan.from_rank_units([[norm, fc2[0], fc1[0]], [fc1[1], fc2[1]]])
    assert [u.global_name for u in plan.units] == [u.global_name for u in (*fc1, *fc2, norm)]
    assert plan.outputs == (("up", (2, 4, 2), F32), ("down", (2, 2, 2), F32), ("norm", (2,), F32))
    assert plan.stacked == {"up": 2, "down": 2}
    assert plan.parts == 5 and plan.nbytes == (16 + 8 + 2) * 4


def test_produced_tensors_other_than_planned_are_refused():
    plan = ExportPlan.from_rank_units([[unit("embedding.word_embeddings.weight", 0, ("e", None, (3, 2), F32))]])
    with pytest.raises(CoverageError, match=r"export produced \[\('e', \(2, 3\)\)\], planned \[\('e', \(3, 2\)\)\]"):
        plan.check_produced(plan.units[0], {"e": torch.zeros(2, 3)})


def test_buckets_are_bounded_except_a_lone_big_tensor():
    outputs = [("a", (10,), F32), ("b", (10,), F32), ("big", (100,), F32), ("c", (5,), torch.bfloat16)]
    assert plan_buckets(outputs, 80) == (Bucket(("a", "b"), 80), Bucket(("big",), 400), Bucket(("c",), 10))
    assert plan_buckets(outputs, 1000) == (Bucket(("a", "b", "big", "c"), 490),)


# -- the weight-sync plan, one process -------------------------------------------------------------


def test_plan_lists_what_the_export_yields_and_buckets_hold_it(moe):
    bridge, model = convert(moe)
    plan = bridge.weight_sync_plan(model, bucket_bytes=30_000)
    yielded = [(n, tuple(t.shape), t.dtype) for n, t in bridge.export_hf_weights(model)]
    assert yielded == list(plan.tensors)
    assert plan.export.stacked == {
        f"model.layers.{i}.mlp.experts.{p}": 4 for i in (0, 1) for p in ("gate_up_proj", "down_proj")
    }
    buckets = list(bridge.export_weight_buckets(model, plan))
    assert [n for b in buckets for n, _ in b] == [n for n, _, _ in yielded]
    sizes = [sum(t.numel() * t.element_size() for _, t in b) for b in buckets]
    assert sizes == [b.nbytes for b in plan.buckets] and len(buckets) > 1
    assert all(s <= 30_000 or len(b) == 1 for s, b in zip(sizes, buckets))
    assert any(s > 30_000 for s in sizes), "the toy has a tensor bigger than a bucket"
    for name, shape, _ in plan.tensors:  # one rank: it holds everything, a stacked tensor slice by slice
        rest = tuple((0, s) for s in shape[1:])
        want = (
            [((e, e + 1), *rest) for e in range(shape[0])] if name in plan.export.stacked else [((0, shape[0]), *rest)]
        )
        assert [s.box for s in plan.geometry[name]] == want and all(s.ranks == (0,) for s in plan.geometry[name])


def test_export_with_the_cached_plan_is_bit_identical_and_plans_nothing(llama, monkeypatch):
    bridge, model = convert(llama)
    reference = [(n, t.clone()) for n, t in bridge.export_hf_weights(model, dtype="bfloat16")]
    plan = bridge.weight_sync_plan(model, dtype="bfloat16")
    monkeypatch.setattr(bridge, "_tasks", lambda *a: pytest.fail("export with a plan built its tasks again"))
    cached = list(bridge.export_hf_weights(model, plan=plan))
    assert [n for n, _ in cached] == [n for n, _ in reference]
    assert all(a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b) for (_, a), (_, b) in zip(reference, cached))


def test_plan_pickles_and_is_plain_json_then_rebinds_to_the_same_model(llama):
    bridge, model = convert(llama)
    plan = bridge.weight_sync_plan(model)
    doc = json.loads(json.dumps(plan.to_dict()))
    assert doc["dtype"] == "float32" and doc["world"] == 1 and doc["bucket_bytes"] == 512 << 20
    assert [t["name"] for t in doc["tensors"]] == [n for n, _, _ in plan.tensors]
    assert doc["tensors"][0]["shards"] == [
        {"ranks": [0], "box": [[0, 1000], [0, 96]], "megatron": "embedding.word_embeddings.weight"}
    ]
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and again.to_dict() == plan.to_dict()
    exported = dict(bridge.export_hf_weights(model, plan=again))  # rebuilt and checked against the plan
    assert all(torch.equal(exported[n], t) for n, t in bridge.export_hf_weights(model))


def test_plan_of_another_model_is_a_one_line_error(llama, moe):
    bridge, model = convert(llama)
    plan = bridge.weight_sync_plan(model)
    other_bridge, other = convert(moe)
    with pytest.raises(ConfigError, match=r"^plan: made for another model or parallel layout") as info:
        list(other_bridge.export_hf_weights(other, plan=plan))
    assert "\n" not in str(info.value)


def test_plan_settings_are_checked(llama):
    bridge, model = convert(llama)
    with pytest.raises(ConfigError, match="bucket_bytes must be a positive number of bytes, got 0"):
        bridge.weight_sync_plan(model, bucket_bytes=0)
    plan = bridge.weight_sync_plan(model)
    with pytest.raises(ConfigError, match="dtype: the plan exports torch.float32, not torch.bfloat16"):
        list(bridge.export_hf_weights(model, plan=plan, dtype="bfloat16"))


# -- several ranks, one launch ---------------------------------------------------------------------


def test_plans_across_layouts_in_one_torchrun_launch(llama, moe, tmp_path):
    """TP=2, PP=2, DP=2 (Llama), EP=2 and TP=2 over stacked experts: fields, cache, buckets, refusal,
    geometry, the replicas' own formatting."""
    plugin = {"module": "_test_bridges", "path": str(HERE)}
    matrix = {
        "llama-tp2": (llama, {"tp": 2}),
        "llama-pp2": (llama, {"pp": 2}),
        "moe-ep2": (moe, {"ep": 2}),
        "moe-tp2": (moe, {"tp": 2}),
        "llama-dp2": (llama, {}),
    }
    cases = [
        {"name": n, "hf_path": str(p), "out": str(tmp_path), "plugin": plugin, **s} for n, (p, s) in matrix.items()
    ]
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    proc = torchrun([str(HERE / "_weight_sync_dist_script.py"), str(spec)], nproc=2, timeout=600)
    for name in matrix:
        for rank in (0, 1):
            result = tmp_path / f"{name}-rank{rank}.txt"
            assert result.exists(), (
                f"{name}: torchrun exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            )
            assert result.read_text() == "ok", f"{name} rank {rank}:\n{result.read_text()}"
