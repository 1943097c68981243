"""An export without a weight-sync plan plans once per model (issue 19): the next export of the same
parameters reuses the tasks and the plan, and anything that could make them stale plans again.
(Several ranks: the cache agrees across ranks, in ``_weight_sync_dist_script.py``.)"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from test_weight_sync import LLAMA, convert, test_plugin  # noqa: F401 (the fixture)

from bridge_core import AutoBridge
from bridge_core.conversion import export_cache
from bridge_core.testing.toy import ToyModel, build_toy


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_toy(ToyModel("LlamaForCausalLM", LLAMA), tmp_path_factory.mktemp("llama"))


def exported(bridge, model, **kwargs) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in bridge.export_hf_weights(model, **kwargs)}


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[n].dtype == b[n].dtype and torch.equal(a[n], b[n]) for n in a)


class Counted:
    """Counts the calls of ``bridge._tasks`` and ``gather_plan`` (the planning an export may skip)."""

    def __init__(self, bridge, monkeypatch):
        self.tasks = self.plans = 0
        tasks, plan = bridge._tasks, export_cache.gather_plan

        def count_tasks(*args):
            self.tasks += 1
            return tasks(*args)

        def count_plans(*args):
            self.plans += 1
            return plan(*args)

        monkeypatch.setattr(bridge, "_tasks", count_tasks)
        monkeypatch.setattr(export_cache, "gather_plan", count_plans)

    def __call__(self) -> tuple[int, int]:
        counts = (self.tasks, self.plans)
        self.tasks = self.plans = 0
        return counts


def test_the_second_export_plans_nothing_and_is_bit_identical(llama, monkeypatch):
    bridge, model = convert(llama)
    planned = Counted(bridge, monkeypatch)
    first = exported(bridge, model)
    assert planned() == (1, 1)
    assert same(exported(bridge, model), first) and planned() == (0, 0)
    bf16 = exported(bridge, model, dtype="bfloat16")  # another dtype: the same tasks, a plan of its own
    assert planned() == (0, 1) and all(t.dtype == torch.bfloat16 for t in bf16.values())
    assert same(exported(bridge, model, dtype="bfloat16"), bf16) and same(exported(bridge, model), first)
    assert planned() == (0, 0)


def test_a_replaced_parameter_is_exported_after_planning_again(llama, monkeypatch):
    bridge, model = convert(llama)
    planned = Counted(bridge, monkeypatch)
    first = exported(bridge, model)
    norm = model[0].decoder.final_layernorm
    old = norm.weight
    norm.weight = torch.nn.Parameter(old.detach() + 1)
    again = exported(bridge, model)
    assert planned() == (2, 2)
    assert torch.equal(again["model.norm.weight"], first["model.norm.weight"] + 1)
    rest = [n for n in first if n != "model.norm.weight"]
    assert same({n: again[n] for n in rest}, {n: first[n] for n in rest})
    norm.weight = old
    assert same(exported(bridge, model), first)


def test_values_changed_in_place_need_no_new_plan(llama, monkeypatch):
    bridge, model = convert(llama)
    first = exported(bridge, model)
    planned = Counted(bridge, monkeypatch)
    with torch.no_grad():
        model[0].decoder.final_layernorm.weight.mul_(2)
    again = exported(bridge, model)
    assert planned() == (0, 0) and torch.equal(again["model.norm.weight"], first["model.norm.weight"] * 2)


def test_a_load_and_another_bridge_plan_afresh_and_copies_carry_no_cache(llama, monkeypatch):
    bridge, model = convert(llama)
    first = exported(bridge, model)
    planned = Counted(bridge, monkeypatch)
    bridge.load_hf_weights(model)  # may pick another HF layout: its next export plans again
    assert planned() == (1, 0)
    assert same(exported(bridge, model), first) and planned() == (1, 1)
    other = AutoBridge.from_hf_pretrained(llama)
    assert same(exported(other, model), first) and planned() == (0, 1)  # its own tasks (not counted) and plan
    assert same(exported(bridge, model), first) and planned() == (1, 1)  # the cache holds one bridge's
    holder = model[0].__dict__[export_cache._ATTRIBUTE]  # (megatron-core's modules hold process groups:
    assert holder.tasks is not None  # they neither deep-copy nor pickle, so the holder is tried alone)
    assert pickle.loads(pickle.dumps(holder)).tasks is None and copy.deepcopy(holder).tasks is None
