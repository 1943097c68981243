"""LoRA on MoE experts on 2 CPU ranks (gloo) in one torchrun launch; rank 0 writes results.json.

``python -m torch.distributed.run --nproc_per_node 2 _peft_experts_dist.py WORKDIR HF_MOE_TOY``:
``{case: {"losses": {step: loss}, "logits": the adapted model's at the case's layout, "error": str | None}}``
for ``ep2`` (expert parallel 2) and ``etp2`` (expert tensor parallel 2; TP=1: MoE training at TP > 1 needs
sequence parallel, which PEFT does not support yet).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

OVERRIDES = [
    "peft.scheme=lora", "peft.rank=4", "peft.alpha=8", "data.kind=mock", "train.iters=4",
    "checkpoint.save_interval=4", "optimizer.lr=1e-2", "scheduler.lr_warmup_iters=0",
    "peft.targets=linear_proj,experts.linear_fc1,experts.linear_fc2",
]  # fmt: skip
CASES = {"ep2": ["parallel.ep=2"], "etp2": ["parallel.etp=2"]}  # MoE training at TP > 1 needs sequence parallel


def adapted_logits(hf: Path, save: Path, sizes: dict) -> tuple[list, dict]:
    """The base plus ``save``'s adapters at ``sizes`` (every rank calls it): fp32 logits of PEFT_IDS, and this
    rank's expert adapters (global indices) and their tensor-parallel size."""
    import torch

    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.peft.apply import apply_peft, lora_modules
    from bridge_core.peft.workflows import load_checkpoint_adapters
    from bridge_core.runtime.cpu_support import cuda_on_cpu
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallel import ParallelSizes, destroy_model_parallel, ensure_model_parallel
    from bridge_core.testing.peft import PEFT_IDS
    from bridge_core.training.config import PeftConfig

    document = json.loads((save / "peft.json").read_text())
    peft = PeftConfig(document["scheme"], document["rank"], document["alpha"], 0.0, document["targets"])
    with cuda_on_cpu():
        ensure_model_parallel(ParallelSizes(**sizes))
        try:
            bridge = AutoBridge.from_hf_pretrained(hf, torch_dtype=torch.float32)
            provider = bridge.to_megatron_provider(load_weights=True)
            provider.tensor_model_parallel_size = sizes.get("tp", 1)
            provider.expert_model_parallel_size = sizes.get("ep", 1)
            provider.expert_tensor_parallel_size = sizes.get("etp", 1)
            provider.finalize()
            model = provider.provide_distributed_model(
                wrap_with_ddp=False, pre_wrap_hook=[lambda chunks: apply_peft(chunks, peft, 0)]
            )
            load_checkpoint_adapters(model, save)
            experts = [m for _, target, m in lora_modules(model) if target.startswith("experts.")]
            layout = {"experts": sorted({m.expert for m in experts}), "expert_tp": sorted({m.tp for m in experts})}
            return forward_logits(model, PEFT_IDS, bridge.hf.config.vocab_size).float().cpu().tolist(), layout
        finally:
            destroy_model_parallel()


def main(work: Path, hf: Path) -> int:
    import _training_plugin
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group
    from bridge_core.training.recipe import load_recipe
    from bridge_core.training.trainer import train

    ensure_process_group()
    _training_plugin.use()
    results = {}
    for name, extra in CASES.items():
        try:
            overrides = [*OVERRIDES, *extra, f"checkpoint.save={work / name}"]
            result = train(load_recipe("toy_moe_sft").with_overrides(overrides), hf_model=hf)
            destroy_model_parallel()
            sizes = {"ep": 2} if name == "ep2" else {"etp": 2}
            logits, layout = adapted_logits(hf, work / name, sizes)
            results[name] = {"losses": result.losses, "logits": logits, "layout": layout, "error": None}
        except Exception:
            results[name] = {"losses": {}, "error": traceback.format_exc()}
        finally:
            destroy_model_parallel()
        dist.barrier()
    if dist.get_rank() == 0:
        (work / "results.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
