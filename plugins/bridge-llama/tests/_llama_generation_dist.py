"""Run by test_generation.py under torchrun: greedy generation at several parallel layouts, one launch.

``python -m torch.distributed.run --nproc_per_node N _llama_generation_dist.py spec.json``; the spec holds
``hf_path``, ``ids`` (one prompt), ``max_new_tokens``, ``eos_token_id``, ``out`` (a JSON file) and
``cases`` (``{"name", "tp", "pp", "vp"}``). For each case every rank generates with and without the KV
cache; rank 0 writes ``{name: {"cache": [per-rank token lists], "recompute": [...]} | {"error": ...}}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run_case(spec: dict, case: dict) -> dict:
    import torch

    from bridge_core import AutoBridge
    from bridge_core.runtime.generation import greedy_generate

    bridge = AutoBridge.from_hf_pretrained(spec["hf_path"])
    provider = bridge.to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.virtual_pipeline_model_parallel_size = case.get("vp")
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    ids = torch.tensor([spec["ids"]])
    kwargs = {"eos_token_id": spec.get("eos_token_id")}
    return {
        "cache": greedy_generate(model, ids, spec["max_new_tokens"], **kwargs)[0].tolist(),
        "recompute": greedy_generate(model, ids, spec["max_new_tokens"], use_cache=False, **kwargs)[0].tolist(),
    }


def main(spec_path: str) -> int:
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    ensure_process_group()
    spec = json.loads(Path(spec_path).read_text())
    results = {}
    for case in spec["cases"]:
        try:
            mine = run_case(spec, case)
        except Exception:
            mine = {"error": f"rank {dist.get_rank()}: {traceback.format_exc()}"}
        finally:
            destroy_model_parallel()
        ranks: list = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, mine)
        errors = [r["error"] for r in ranks if "error" in r]
        if errors:
            results[case["name"]] = {"error": "\n".join(errors)}
        else:
            results[case["name"]] = {key: [r[key] for r in ranks] for key in ("cache", "recompute")}
    if dist.get_rank() == 0:
        Path(spec["out"]).write_text(json.dumps(results))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
