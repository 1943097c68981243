"""Run many conversion cases in one ``torchrun`` launch (each launch costs seconds of imports).

``python -m torch.distributed.run --nproc_per_node N -m bridge_core.testing.dist_runner cases.json``
Each case: ``{"name", "hf_path", "tp", "pp", "ep", "etp", "vp", "dtype", "load_weights", "ids",
"out", "plugin"}``; ``plugin`` (optional, ``{"module": ..., "path": ...}``) registers that module
in-process as the only plugin instead of discovering the installed ones. For each case, through the
public API only: build the provider at that parallelism, load the HF weights, compute logits for the
saved ``ids`` (written to ``out/logits.pt``), save the model back to ``out/hf``, and check that an
export to every rank (weight sync) gives each rank the saved tensors. A case that raises writes
``out/error-rank<r>.txt`` and the runner moves on.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def use_plugin(spec: dict | None) -> None:
    """Register ``spec["module"]`` (importable from ``spec["path"]``) as the only plugin, or rediscover."""
    import importlib

    from bridge_core.plugins.discovery import reset_registry
    from bridge_core.plugins.registry import Registry

    if spec is None:
        reset_registry()
        return
    if spec.get("path") and spec["path"] not in sys.path:
        sys.path.insert(0, spec["path"])
    registry = Registry()
    registry.add_plugin(importlib.import_module(spec["module"]), name=spec["module"], strict=True)
    reset_registry(registry)


def run_case(case: dict) -> None:
    import torch
    import torch.distributed as dist

    from bridge_core import AutoBridge
    from bridge_core.runtime.inference import forward_logits

    use_plugin(case.get("plugin"))
    out = Path(case["out"])
    bridge = AutoBridge.from_hf_pretrained(case["hf_path"], torch_dtype=case.get("dtype"))
    provider = bridge.to_megatron_provider(load_weights=case.get("load_weights", False))
    provider.tensor_model_parallel_size = case.get("tp", 1)
    provider.pipeline_model_parallel_size = case.get("pp", 1)
    provider.virtual_pipeline_model_parallel_size = case.get("vp")
    provider.expert_model_parallel_size = case.get("ep", 1)
    provider.expert_tensor_parallel_size = case.get("etp")
    provider.finalize()
    model = provider.provide_distributed_model(wrap_with_ddp=False)
    if not case.get("load_weights", False):
        bridge.load_hf_weights(model)
    ids = torch.load(case["ids"], weights_only=True)
    logits = forward_logits(model, ids, vocab_size=bridge.hf_config.vocab_size)
    if dist.get_rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save(logits, out / "logits.pt")
    bridge.save_hf_pretrained(model, out / "hf", overwrite=True)
    check_weight_sync(bridge, model, out / "hf")


def check_weight_sync(bridge, model, saved: Path) -> None:
    """``export_hf_weights`` with every rank receiving (RL weight sync) gives each rank what was saved."""
    import torch
    import torch.distributed as dist

    from bridge_core.checkpoints.safetensors_io import SafetensorsCheckpoint

    dist.barrier()  # rank 0 has renamed the folder into place
    reference, rank, seen = SafetensorsCheckpoint(saved), dist.get_rank(), []
    for name, tensor in bridge.export_hf_weights(model, cpu=True):
        if name not in reference or not torch.equal(tensor, reference[name]):
            raise AssertionError(f"weight sync on rank {rank}: {name} differs from the saved tensor")
        seen.append(name)
    if sorted(seen) != sorted(reference):
        raise AssertionError(f"weight sync on rank {rank}: received {len(seen)} tensors, {len(reference)} saved")
    reference.close()


def main(spec_path: str) -> int:
    import torch.distributed as dist

    from bridge_core.runtime.parallel import destroy_model_parallel, ensure_process_group

    ensure_process_group()
    cases = json.loads(Path(spec_path).read_text())
    for case in cases:
        try:
            run_case(case)
        except Exception:
            out = Path(case["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / f"error-rank{dist.get_rank()}.txt").write_text(traceback.format_exc())
        finally:
            destroy_model_parallel()
        dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
