"""Run by test_gpt_oss_plan.py in a fresh process: the conversion plan of the real GPT-OSS-120B config
at TP=1 PP=1 EP=8, for every one of the 8 ranks, without weights.

One process plays each rank in turn over torch's fake process group (collectives are no-ops); each
rank's model chunk is built on the meta device (no memory), its plan built against the released
checkpoint's tensor names and shapes (MXFP4 experts, from transformers' meta model), its shapes
checked by the engine's dry run (the dequantization included), and the union of the 8 plans checked
for coverage (every tensor, every expert slice, consumed exactly once). Prints one JSON line:
``{"ranks": [{"rank", "held_bytes", "read_bytes", "params", "tasks"}...], "hf_bytes": ...}``.
"""

from __future__ import annotations

import json
import sys

EP = 8


def checkpoint_meta(hf_config) -> dict:
    """The released checkpoint's tensors (name -> TensorMeta): bf16, experts as MXFP4 blocks/scales."""
    import torch
    from bridge_core.checkpoints.safetensors_io import TensorMeta
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    meta = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, inputs, outputs = tensor.shape  # HF bf16 layout [E, in, out]; MXFP4 holds [E, out, in]
            meta[f"{name}_blocks"] = TensorMeta("model.safetensors", (experts, outputs, inputs // 32, 16), torch.uint8)
            meta[f"{name}_scales"] = TensorMeta("model.safetensors", (experts, outputs, inputs // 32), torch.uint8)
        else:
            meta[name] = TensorMeta("model.safetensors", tuple(tensor.shape), tensor.dtype)
    return meta


def plan_rank(rank: int, hf_config, meta: dict) -> tuple[dict, list]:
    import torch
    import torch.distributed as dist
    from bridge_core import AutoBridge
    from bridge_core.conversion import plan
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", rank=rank, world_size=EP, store=FakeStore())
    ps.initialize_model_parallel(expert_model_parallel_size=EP, create_gloo_process_groups=False)
    try:
        bridge = AutoBridge.from_hf_config(hf_config)
        provider = bridge.to_megatron_provider()
        provider.expert_model_parallel_size = EP
        provider.perform_initialization = False
        provider.finalize()
        with torch.device("meta"):
            model = provider.provide_distributed_model(wrap_with_ddp=False)
        tasks, _, config = bridge._tasks(model, meta)
        plan.check_import_shapes(tasks, meta, config, bridge.bridge.hf_config)
        params = list(model[0].parameters())
        read = 0
        for task in tasks:
            for key in task.hf_keys:
                info = meta[key]
                read += info.nbytes // info.shape[0] if task.mapping.index is not None else info.nbytes
        row = {
            "rank": rank,
            "params": sum(p.numel() for p in params),
            "held_bytes": sum(p.numel() * p.element_size() for p in params),
            "read_bytes": read,
            "tasks": len(tasks),
        }
        return row, plan.consumption(tasks)
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def main() -> int:
    from bridge_core.conversion import plan
    from transformers import AutoConfig

    from bridge_gpt_oss.recipes import MODELS

    values = {k: v for k, v in MODELS["gpt_oss_120b"][1].items() if k not in ("model_type", "architecture")}
    quantization = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "lm_head"]}
    hf_config = AutoConfig.for_model(
        "gpt_oss", architectures=["GptOssForCausalLM"], dtype="bfloat16", quantization_config=quantization, **values
    )
    meta = checkpoint_meta(hf_config)
    rows, consumed = [], []
    for rank in range(EP):
        row, used = plan_rank(rank, hf_config, meta)
        rows.append(row)
        consumed += used
    plan.check_import_coverage(consumed, meta, companions_ok=True)
    print(json.dumps({"ranks": rows, "hf_bytes": sum(m.nbytes for m in meta.values()), "hf_tensors": len(meta)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
