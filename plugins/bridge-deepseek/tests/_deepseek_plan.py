"""The conversion plan of the real DeepSeek-V3 at TP=1 PP=16 EP=8, every pipeline stage, no weights.

Run as a program (``python _deepseek_plan.py OUT.json``): a fake process group of 128 ranks (torch's
``fake`` backend: no communication) stands in for the cluster; each probed rank builds its model chunk
on the meta device (no memory), and the core's planner binds every parameter to a mapping
(``plan.build_tasks``; an unmapped parameter is an error). Writes, per probed rank, the parameters it
holds and their bytes (bf16, fp32 routers), and the HF tensors it reads with their bf16 bytes.
"""

from __future__ import annotations

import json
import math
import sys

import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

WORLD, PP, EP = 128, 16, 8


def probe(rank: int, recipe) -> dict:
    from bridge_core.conversion import plan
    from bridge_core.conversion.params import collect_params
    from bridge_core.runtime.cpu_support import apply_cpu_patches
    from bridge_core.testing.recipes import recipe_provider
    from megatron.core import parallel_state as ps

    from bridge_deepseek.bridge import DeepseekV3Bridge

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=WORLD)
    apply_cpu_patches()
    ps.initialize_model_parallel(
        pipeline_model_parallel_size=PP, expert_model_parallel_size=EP, create_gloo_process_groups=False
    )
    provider = recipe_provider(recipe)
    provider.pipeline_model_parallel_size, provider.expert_model_parallel_size = PP, EP
    provider.num_layers_in_first_pipeline_stage, provider.num_layers_in_last_pipeline_stage = 4, 1
    provider.params_dtype, provider.perform_initialization = torch.bfloat16, False
    provider.finalize()
    provider.use_cpu_initialization = False  # parameters on torch.cuda.current_device(): the meta device
    original = torch.cuda.current_device
    torch.cuda.current_device = lambda: "meta"
    try:
        chunk = provider.provide()
    finally:
        torch.cuda.current_device = original
    pp_rank, ep_rank = ps.get_pipeline_model_parallel_rank(), ps.get_expert_model_parallel_rank()
    bridge = DeepseekV3Bridge(hf_config=recipe_hf_config(recipe))
    params = collect_params([chunk], 1, 1, ep_rank)
    bridge.select_hf_layout(provider, None)
    tasks = plan.build_tasks(params, bridge.mapping_registry(), tied=False, owner="DeepseekV3Bridge")
    held = sum(math.prod(t.param.shape) * t.param.dtype.itemsize for t in tasks)  # the duplicate embedding too
    reads = {}
    for task in tasks:
        for name, shape in plan.expected_hf_shapes(task, provider, bridge.hf_config).items():
            reads[name] = math.prod(shape) * 2
    ps.destroy_model_parallel()
    dist.destroy_process_group()
    return {
        "rank": rank,
        "pp_rank": pp_rank,
        "ep_rank": ep_rank,
        "params": {t.param.global_name: math.prod(t.param.shape) for t in tasks if not t.tied_copy},
        "tied_copies": [t.param.global_name for t in tasks if t.tied_copy],
        "held_bytes": held,
        "read_bytes": sum(reads.values()),
        "hf_tensors": sorted(reads),
    }


def recipe_hf_config(recipe):
    from transformers import AutoConfig

    values = dict(recipe.model.hf_config)
    return AutoConfig.for_model(values.pop("model_type"), architectures=[recipe.model.architecture], **values)


def main(out: str) -> None:
    from bridge_deepseek.recipes import deepseek_v3_pretrain

    recipe = deepseek_v3_pretrain()
    ranks = [p * (WORLD // PP) for p in range(PP)] + [1 * (WORLD // PP) + EP - 1]  # every stage at EP rank 0; one at 7
    with open(out, "w") as f:
        json.dump([probe(rank, recipe) for rank in ranks], f)


if __name__ == "__main__":
    main(sys.argv[1])
