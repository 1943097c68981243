"""Megatron checkpoints across parallel sizes, all in one torchrun launch of 2 CPU processes.

``python -m torch.distributed.run --nproc_per_node 2 _ckpt_dist_script.py WORKDIR``. Saves a TP=1
checkpoint of a random model (its full tensors are the reference), then loads checkpoints at other
TP/PP/VP sizes, compares every gathered full tensor with the reference bit for bit, and saves again
from some of them. Rank 0 writes ``WORKDIR/results.json``: ``{step: {"mismatch", "missing", "error"}}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

# (step, parallel sizes, checkpoint to load (None: random init), checkpoint to save)
STEPS = [
    ("save_tp1", {}, None, "tp1"),
    ("tp2_from_tp1", {"tp": 2}, "tp1", "tp2"),
    ("pp2_from_tp1", {"pp": 2}, "tp1", None),
    ("vp2_from_tp1", {"pp": 2, "vp": 2}, "tp1", "vp2"),
    ("tp1_from_tp2", {}, "tp2", None),
    ("tp1_from_vp2", {}, "vp2", None),
]

MODEL = dict(
    num_layers=4,
    hidden_size=64,
    num_attention_heads=4,
    num_query_groups=2,
    ffn_hidden_size=96,
    vocab_size=300,
    normalization="RMSNorm",
    gated_linear_unit=True,
    add_bias_linear=False,
    transformer_layer_spec="local",
)


def full_tensors(chunks, provider) -> dict:
    """This rank's parameters as full (TP-gathered) tensors, by global name."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from bridge_core.conversion.params import collect_params

    tp = ps.get_tensor_model_parallel_world_size()
    out = {}
    for info in collect_params(chunks, tp, tp, 0):
        local = info.tensor.detach().contiguous()
        if info.tp_dim is None or tp == 1:
            out[info.global_name] = local.clone()
            continue
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
        if provider.gated_linear_unit and ".mlp.linear_fc1." in info.global_name:  # [gate_r; up_r] per rank
            halves = [p.chunk(2, dim=0) for p in parts]
            parts = [h[0] for h in halves] + [h[1] for h in halves]
        out[info.global_name] = torch.cat(parts, dim=info.tp_dim)
    return out


def run_step(work: Path, step: str, sizes: dict, source: str | None, target: str | None) -> dict:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from bridge_core.checkpoints.megatron_checkpoint import (
        load_megatron_checkpoint,
        load_weights_into,
        provider_kwargs_from_run_config,
        save_megatron_checkpoint,
    )
    from bridge_core.model.provider import GPTModelProvider

    if source is None:
        kwargs = {**MODEL, "activation_func": F.silu}
    else:
        kwargs = provider_kwargs_from_run_config(load_megatron_checkpoint(work / source).run_config)
    provider = GPTModelProvider(**kwargs)
    provider.tensor_model_parallel_size = sizes.get("tp", 1)
    provider.pipeline_model_parallel_size = sizes.get("pp", 1)
    provider.virtual_pipeline_model_parallel_size = sizes.get("vp")
    chunks = provider.provide_distributed_model()
    torch.manual_seed(0 if source is None else 1)  # the same values on every rank; a load must replace them
    with torch.no_grad():
        for chunk in chunks:
            for param in chunk.parameters():
                param.normal_()
    if source is not None:
        load_weights_into(chunks, work / source)
    mine = full_tensors(chunks, provider)
    result = {"mismatch": [], "missing": []}
    if source is None:
        if dist.get_rank() == 0:
            torch.save(mine, work / "reference.pt")
    else:
        reference = torch.load(work / "reference.pt", weights_only=True)
        result["mismatch"] = sorted(
            n for n, t in mine.items() if n not in reference or not torch.equal(t, reference[n])
        )
        seen: list = [None] * dist.get_world_size()
        dist.all_gather_object(seen, sorted(mine))
        result["missing"] = sorted(set(reference) - {n for names in seen for n in names})
    if target is not None:
        save_megatron_checkpoint(
            chunks,
            provider,
            work / target,
            run_config={"step": step},
            provenance={"from": source},
            tokenizer_files=[],
        )
    return result


def main(workdir: str) -> int:
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    ensure_process_group()
    work = Path(workdir)
    results = {}
    for step, sizes, source, target in STEPS:
        try:
            results[step] = run_step(work, step, sizes, source, target)
        except Exception:
            results[step] = {"error": f"rank {dist.get_rank()}: {traceback.format_exc()}"}
        finally:
            destroy_model_parallel()
        dist.barrier()
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        merged = {}
        for step, *_ in STEPS:
            per_rank = [r[step] for r in gathered]
            errors = [r["error"] for r in per_rank if "error" in r]
            merged[step] = {
                "error": "\n".join(errors) or None,
                "mismatch": sorted({n for r in per_rank for n in r.get("mismatch", [])}),
                "missing": per_rank[0].get("missing", []),
            }
        (work / "results.json").write_text(json.dumps(merged, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
