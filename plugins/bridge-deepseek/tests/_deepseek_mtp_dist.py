"""Run by test_deepseek_mtp.py under torchrun: an MTP checkpoint imported and exported at several layouts.

``torchrun --nproc_per_node 2 _deepseek_mtp_dist.py spec.json``; the spec holds ``hf_path``, ``out`` (a
folder) and ``cases`` (``{"name", "tp", "pp", "ep", "etp"}``). Each case exports to ``out/<name>``;
rank 0 writes ``out/errors.json`` (``{name: error or None}``).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run_case(spec: dict, case: dict) -> None:
    from bridge_core import AutoBridge

    bridge = AutoBridge.from_hf_pretrained(spec["hf_path"])
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.expert_model_parallel_size = case.get("ep", 1)
    provider.expert_tensor_parallel_size = case.get("etp")
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    bridge.save_hf_pretrained(model, Path(spec["out"]) / case["name"])


def main(spec_path: str) -> int:
    import torch.distributed as dist
    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    ensure_process_group()
    spec = json.loads(Path(spec_path).read_text())
    errors = {}
    for case in spec["cases"]:
        try:
            run_case(spec, case)
            mine = None
        except Exception:
            mine = f"rank {dist.get_rank()}: {traceback.format_exc()}"
        finally:
            destroy_model_parallel()
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        errors[case["name"]] = "\n".join(r for r in ranks if r) or None
    if dist.get_rank() == 0:
        (Path(spec["out"]) / "errors.json").write_text(json.dumps(errors))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
