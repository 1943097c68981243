"""Training cases on 2 CPU ranks (gloo) in one torchrun launch; rank 0 writes ``WORKDIR/results.json``.

``python -m torch.distributed.run --nproc_per_node 2 _training_dist_script.py WORKDIR``:
``{case: {"losses": {step: loss}, "error": str | None}}``.
"""

from __future__ import annotations

import json
import shutil
import sys
import traceback
from pathlib import Path

COMMON = ["train.iters=8", "checkpoint.save_interval=4"]


def cases(work: Path) -> list[tuple[str, list[str]]]:
    return [
        ("dp2", [*COMMON, f"checkpoint.save={work / 'dp2'}"]),
        ("tp2", [*COMMON, "parallel.tp=2", f"checkpoint.save={work / 'tp2'}"]),
        ("dp2_resumed", [*COMMON, f"checkpoint.save={work / 'dp2_resumed'}"]),
    ]


def interrupt(source: Path, target: Path, at: int) -> None:
    shutil.copytree(source, target)
    for folder in target.glob("iter_*"):
        if int(folder.name[5:]) > at:
            shutil.rmtree(folder)
    (target / "latest_checkpointed_iteration.txt").write_text(str(at))


def main(work: Path) -> int:
    import _training_plugin
    import torch.distributed as dist

    from bridge_core.parallel import destroy_model_parallel, ensure_process_group
    from bridge_core.training.recipe import load_recipe
    from bridge_core.training.trainer import train

    ensure_process_group()
    _training_plugin.use()
    results = {}
    for name, overrides in cases(work):
        try:
            if name == "dp2_resumed" and dist.get_rank() == 0:
                interrupt(work / "dp2", work / "dp2_resumed", at=4)
            dist.barrier()
            result = train(load_recipe("toy_pretrain").with_overrides(overrides))
            results[name] = {"losses": result.losses, "error": None}
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
    sys.exit(main(Path(sys.argv[1])))
