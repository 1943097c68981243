"""Run by bridge-olmo's tests under torchrun: logits and greedy generation at several layouts, one launch.

``python -m torch.distributed.run --nproc_per_node N _olmo_dist.py spec.json``; the spec holds ``hf_path``,
``ids`` (one prompt), ``max_new_tokens``, ``eos_token_id``, ``out`` (a JSON file) and ``cases``
(``{"name", "tp", "pp", "ep", "etp", "mode": "generate" | "logits", "per_shard_norm": bool}``).
``logits`` gives the max |Δ| to transformers' logits on ``ids``; ``per_shard_norm`` is the ablation that
normalises q/k over this rank's heads only (no sum across TP). Rank 0 writes
``{name: [per-rank results] | {"error": ...}}``.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def run_case(spec: dict, case: dict) -> object:
    import torch
    from bridge_core import AutoBridge
    from bridge_core.runtime.generation import greedy_generate
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.testing.compare import max_abs_diff
    from bridge_core.testing.toy import hf_logits

    from bridge_olmo.modeling_olmo import norms

    if case.get("per_shard_norm"):
        norms.tp_sum = lambda value, group: value
    provider = AutoBridge.from_hf_pretrained(spec["hf_path"]).to_megatron_provider(load_weights=True)
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.expert_model_parallel_size = case.get("ep", 1)
    provider.expert_tensor_parallel_size = case.get("etp")
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    ids = torch.tensor([spec["ids"]])
    if case.get("mode") == "logits":
        vocab = spec["vocab_size"]
        return max_abs_diff(forward_logits(model, ids, vocab_size=vocab), hf_logits(spec["hf_path"], ids))
    return greedy_generate(model, ids, spec["max_new_tokens"], eos_token_id=spec.get("eos_token_id"))[0].tolist()


def main(spec_path: str) -> int:
    import torch.distributed as dist
    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    from bridge_olmo.modeling_olmo import norms

    ensure_process_group()
    spec = json.loads(Path(spec_path).read_text())
    results, tp_sum = {}, norms.tp_sum
    for case in spec["cases"]:
        try:
            mine: object = run_case(spec, case)
        except Exception:
            mine = {"error": f"rank {dist.get_rank()}: {traceback.format_exc()}"}
        finally:
            norms.tp_sum = tp_sum
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
