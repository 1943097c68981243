"""Training cases on 2 CPU ranks (gloo) in one torchrun launch (on 1: the references); rank 0 writes results.json.

``python -m torch.distributed.run --nproc_per_node 2 _training_dist_script.py WORKDIR HF_TOY HF_MOE_TOY``:
``{case: {"losses": {step: loss}, "error": str | None}}``; ``<case>_resumed[...]`` continues a copy
of ``<case>`` cut at iteration 4 (``dp2_full_resumed`` and ``dp2_resumed_at_tp2`` at TP=2). The
``dp2``/``tp2`` cases start from the recipe's random initialisation; the pipeline cases from the
4-layer HF toy's weights (a pipeline stage's initialisation draws another random stream).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import traceback
from pathlib import Path

COMMON = ["train.iters=8", "checkpoint.save_interval=4"]


PIPELINE = [*COMMON, "data.kind=mock", "parallel.pp=2"]
PEFT = {s: [*COMMON, "data.kind=mock", f"peft.scheme={s}", "peft.rank=4", "peft.alpha=8", "optimizer.lr=1e-2"]
        for s in ("lora", "dora")}
FULL = [*COMMON, "optimizer.dist_ckpt_sharding=fully_reshardable"]


def cases(work: Path, world: int) -> list[tuple[str, str, list[str]]]:
    """(case, recipe, overrides); ``*_resumed`` continues a copy of its case cut at iteration 4.

    At world size 1: the reference curves (on the CPU as the others, also where a GPU is visible:
    a CUDA initialisation draws other random numbers)."""
    if world == 1:
        return [
            ("toy_pretrain", "toy_pretrain", [*COMMON, f"checkpoint.save={work / 'world1_pretrain'}"]),
            ("toy_sft", "toy_sft", [*COMMON, "data.kind=mock", f"checkpoint.save={work / 'world1_sft'}"]),
            ("toy_moe_sft", "toy_moe_sft", [*COMMON, "data.kind=mock", f"checkpoint.save={work / 'world1_moe'}"]),
            *[(s, "toy_sft", [*PEFT[s], f"checkpoint.save={work / f'world1_{s}'}"]) for s in PEFT],
        ]
    return [
        ("dp2", "toy_pretrain", [*COMMON, f"checkpoint.save={work / 'dp2'}"]),
        ("tp2", "toy_pretrain", [*COMMON, "parallel.tp=2", f"checkpoint.save={work / 'tp2'}"]),
        ("dp2_resumed", "toy_pretrain", [*COMMON, f"checkpoint.save={work / 'dp2_resumed'}"]),
        ("dp2_full", "toy_pretrain", [*FULL, f"checkpoint.save={work / 'dp2_full'}"]),
        ("dp2_full_resumed", "toy_pretrain", [*FULL, "parallel.tp=2", f"checkpoint.save={work / 'dp2_full_resumed'}"]),
        ("pp2", "toy_sft", [*PIPELINE, f"checkpoint.save={work / 'pp2'}"]),
        ("pp2_resumed", "toy_sft", [*PIPELINE, f"checkpoint.save={work / 'pp2_resumed'}"]),
        ("vpp2", "toy_sft", [*PIPELINE, "parallel.vpp=2", f"checkpoint.save={work / 'vpp2'}"]),
        ("ep2", "toy_moe_sft", [*COMMON, "data.kind=mock", "parallel.ep=2", f"checkpoint.save={work / 'ep2'}"]),
        *[(f"{s}_tp2", "toy_sft", [*PEFT[s], "parallel.tp=2", f"checkpoint.save={work / f'{s}_tp2'}"]) for s in PEFT],
        (
            "dp2_resumed_at_tp2",
            "toy_pretrain",
            [*COMMON, "parallel.tp=2", f"checkpoint.save={work / 'dp2_resumed_at_tp2'}"],
        ),
    ]


def interrupt(source: Path, target: Path, at: int) -> None:
    shutil.copytree(source, target)
    for folder in target.glob("iter_*"):
        if int(folder.name[5:]) > at:
            shutil.rmtree(folder)
    (target / "latest_checkpointed_iteration.txt").write_text(str(at))


def main(work: Path, hf: Path, hf_moe: Path) -> int:
    import _training_plugin
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group
    from bridge_core.testing.peft import PEFT_IDS, megatron_peft_logits
    from bridge_core.training.recipe import load_recipe
    from bridge_core.training.trainer import train

    ensure_process_group()
    _training_plugin.use()
    results = {}
    only = os.environ.get("TRAINING_CASES")  # a comma-separated subset, for debugging one case
    for name, recipe, overrides in cases(work, dist.get_world_size()):
        if only and name not in only.split(","):
            continue
        try:
            source = name.split("_resumed")[0]
            if "_resumed" in name and dist.get_rank() == 0:
                interrupt(work / source, work / name, at=4)
            dist.barrier()
            weights = {"hf_model": {"toy_sft": hf, "toy_moe_sft": hf_moe}[recipe]} if "sft" in recipe else {}
            result = train(load_recipe(recipe).with_overrides(overrides), **weights)
            results[name] = {"losses": result.losses, "error": None}
            if name.endswith("_tp2"):  # the adapted model's logits at TP=2, for the test to compare with peft's
                destroy_model_parallel()
                logits = megatron_peft_logits(hf, result.save, PEFT_IDS, tp=2)
                results[name]["logits"] = logits.tolist()
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
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
