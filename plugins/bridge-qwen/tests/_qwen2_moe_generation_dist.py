"""Run by test_qwen2_moe_features.py under torchrun: greedy generation at several parallel layouts, one launch.

``python -m torch.distributed.run --nproc_per_node N _qwen2_moe_generation_dist.py spec.json``; the spec holds
``hf_path``, ``ids`` (one prompt), ``max_new_tokens``, ``eos_token_id``, ``out`` (a JSON file) and ``cases``
(``{"name", "tp", "pp", "ep", "etp"}``). Rank 0 writes ``{name: [per-rank token lists] | {"error": ...}}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run_case(spec: dict, case: dict) -> list[int]:
    import torch

    from bridge_core import AutoBridge
    from bridge_core.runtime.generation import greedy_generate

    provider = AutoBridge.from_hf_pretrained(spec["hf_path"]).to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.expert_model_parallel_size = case.get("ep", 1)
    provider.expert_tensor_parallel_size = case.get("etp")
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    ids = torch.tensor([spec["ids"]])
    return greedy_generate(model, ids, spec["max_new_tokens"], eos_token_id=spec.get("eos_token_id"))[0].tolist()


def main(spec_path: str) -> int:
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    ensure_process_group()
    spec = json.loads(Path(spec_path).read_text())
    results = {}
    for case in spec["cases"]:
        try:
            mine: object = run_case(spec, case)
        except Exception:
            mine = {"error": f"rank {dist.get_rank()}: {traceback.format_exc()}"}
        finally:
            destroy_model_parallel()
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        errors = [r["error"] for r in ranks if isinstance(r, dict)]
        results[case["name"]] = {"error": "\n".join(errors)} if errors else ranks
    if dist.get_rank() == 0:
        Path(spec["out"]).write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
