"""Weight-sync plans across parallel layouts, all in one torchrun launch of 2 CPU processes.

``python -m torch.distributed.run --nproc_per_node 2 _weight_sync_dist_script.py CASES.json``. Each
case builds a model from an HF toy at its layout, loads it, and checks on every rank: the plan's
tensors are what an export yields; an export with the plan communicates nothing before its first
tensor and is bit-identical; buckets hold what the plan says; the plan is the same JSON on every
rank; the previous case's (pickled) plan is refused; and the geometry matches the real shards (every
rank fills its parameters with ``rank + 1``: each box of the export then holds its ranks' labels, and
the boxes tile every tensor); and a plain export's cache is used only where every rank's is valid.
Each rank writes ``OUT/<case>-rank<r>.txt``: ``ok`` or the traceback.
"""

from __future__ import annotations

import json
import pickle
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from bridge_core import AutoBridge
from bridge_core.conversion import export_cache
from bridge_core.errors import ConfigError
from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group
from bridge_core.testing.dist_runner import use_plugin

BUCKET = 20_000


def build(case: dict):
    bridge = AutoBridge.from_hf_pretrained(case["hf_path"])
    provider = bridge.to_megatron_provider()
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.expert_model_parallel_size = case.get("ep", 1)
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.load_hf_weights(model)
    return bridge, model


def no_collective_before_first_tensor(bridge, model, plan):
    """The first tensor of an export with the plan, with ``all_gather_object`` and re-planning refused."""

    def refuse(*args, **kwargs):
        raise AssertionError("export with a plan planned again")

    saved, tasks = dist.all_gather_object, bridge._tasks
    dist.all_gather_object, bridge._tasks = refuse, refuse
    try:
        stream = bridge.export_hf_weights(model, plan=plan)
        first = next(stream)
    finally:
        dist.all_gather_object, bridge._tasks = saved, tasks
    return [first, *stream]


def cache_agrees_across_ranks(bridge, model, reference, rank):
    """A plain export again plans nothing (every rank's cache is valid); after rank 1 alone replaces
    its parameters, every rank plans again (else their collectives would not match) and the new
    values arrive; with the old parameters back, the reference again."""

    def refuse(*args, **kwargs):
        raise AssertionError("a valid cache planned again")

    saved = bridge._tasks, export_cache.gather_plan
    bridge._tasks, export_cache.gather_plan = refuse, refuse
    try:
        again = [(n, t.clone()) for n, t in bridge.export_hf_weights(model)]
    finally:
        bridge._tasks, export_cache.gather_plan = saved
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(reference, again)), "cached export differs"
    slots = [(m, n, p) for c in model for m in c.modules() for n, p in m.named_parameters(recurse=False)]
    if rank == 1:
        for owner, attribute, old in slots:
            new = torch.nn.Parameter(old.detach() + 1)
            new.__dict__.update(old.__dict__)
            setattr(owner, attribute, new)
    changed = [(n, t.clone()) for n, t in bridge.export_hf_weights(model)]
    differ = sum(not torch.equal(a, b) for (_, a), (_, b) in zip(reference, changed))
    for owner, attribute, old in slots:
        setattr(owner, attribute, old)
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, differ)  # (at DP=2 rank 1 formats its own copies: only it sees them)
    assert sum(counts) > 0, "rank 1's replaced parameters were not exported"
    restored = list(bridge.export_hf_weights(model))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(reference, restored)), "restored export differs"


def replicas_format_their_own(bridge, model, plan, expect_replicated):
    """Every rank receiving: the units every rank holds whole (the dense ones at EP=2) are formatted
    by each rank and never broadcast (at DP=2: none is); every other part is broadcast once."""
    replicated = plan.export.replicated
    assert bool(replicated) == expect_replicated, f"replicated units: {sorted(replicated)[:4]}"
    assert all(".experts." not in name for name in replicated), sorted(replicated)[:4]
    sent, broadcast = [], dist.broadcast
    dist.broadcast = lambda tensor, *a, **k: (sent.append(tensor.shape), broadcast(tensor, *a, **k))[1]
    try:
        list(bridge.export_hf_weights(model, plan=plan))
    finally:
        dist.broadcast = broadcast
    want = [tuple(s) for u in plan.export.units if u.global_name not in replicated for _, _, s, _ in u.parts]
    assert [tuple(s) for s in sent] == want, f"{len(sent)} broadcasts, {len(want)} planned"


def check_geometry(bridge, model, plan, rank):
    with torch.no_grad():
        for chunk in model:
            for p in chunk.parameters():
                p.fill_(rank + 1)
    labelled = dict(bridge.export_hf_weights(model, plan=plan))
    for name, shape, _ in plan.tensors:
        count = torch.zeros(shape, dtype=torch.int32)
        for shard in plan.geometry[name]:
            assert shard.box is not None, f"{name}: geometry not described ({shard.megatron})"
            box = tuple(slice(a, b) for a, b in shard.box)
            values = set(labelled[name][box].unique().tolist())
            labels = {r + 1 for r in shard.ranks}
            assert values <= labels, f"{name}{shard.box}: holds labels {values}, geometry says ranks {shard.ranks}"
            count[box] += 1
        assert bool((count == 1).all()), f"{name}: the boxes do not tile it (counts {count.unique().tolist()})"


def run_case(case: dict, out: Path, previous: Path | None) -> None:
    rank = dist.get_rank()
    bridge, model = build(case)
    reference = [(n, t.clone()) for n, t in bridge.export_hf_weights(model)]
    cache_agrees_across_ranks(bridge, model, reference, rank)
    plan = bridge.weight_sync_plan(model, bucket_bytes=BUCKET)
    got = [(n, tuple(t.shape), t.dtype) for n, t in reference]
    assert got == list(plan.tensors), f"plan tensors differ from the export: {got[:3]} vs {list(plan.tensors)[:3]}"
    cached = no_collective_before_first_tensor(bridge, model, plan)
    assert [n for n, _ in cached] == [n for n, _ in reference], "cached export: other names"
    for (name, a), (_, b) in zip(reference, cached):
        assert a.dtype == b.dtype and torch.equal(a, b), f"cached export: {name} differs"
    buckets = list(bridge.export_weight_buckets(model, plan))
    assert [n for b in buckets for n, _ in b] == [n for n, _ in reference], "buckets: other names"
    for bucket, planned in zip(buckets, plan.buckets):
        nbytes = sum(t.numel() * t.element_size() for _, t in bucket)
        assert nbytes == planned.nbytes and (nbytes <= BUCKET or len(bucket) == 1), f"bucket of {nbytes} bytes"
    text = json.dumps(plan.to_dict(), sort_keys=True)
    texts = [None] * dist.get_world_size()
    dist.all_gather_object(texts, text)
    assert all(t == text for t in texts), "the plan differs between ranks"
    (out / f"plan-{case['name']}-rank{rank}.pkl").write_bytes(pickle.dumps(plan))
    if previous is not None:
        old = pickle.loads(previous.read_bytes())
        try:
            next(bridge.export_hf_weights(model, plan=old))
            raise AssertionError("a plan of another layout was accepted")
        except ConfigError as exc:
            assert "\n" not in str(exc) and "plan" in str(exc), str(exc)
    if case.get("tp", 1) == 1:  # (at TP=2 the world is one group: its ranks share shards instead)
        replicas_format_their_own(bridge, model, plan, expect_replicated=case.get("pp", 1) == 1)
    check_geometry(bridge, model, plan, rank)


def main(spec: str) -> int:
    ensure_process_group()
    cases = json.loads(Path(spec).read_text())
    previous = None
    for case in cases:
        out = Path(case["out"])
        out.mkdir(parents=True, exist_ok=True)
        use_plugin(case.get("plugin"))
        try:
            run_case(case, out, previous)
            result = "ok"
        except Exception:
            result = traceback.format_exc()
        finally:
            destroy_model_parallel()
        (out / f"{case['name']}-rank{dist.get_rank()}.txt").write_text(result)
        previous = out / f"plan-{case['name']}-rank{dist.get_rank()}.pkl"
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
