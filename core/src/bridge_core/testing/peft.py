"""PEFT checks for test suites: a Megatron model with a checkpoint's adapters, and its logits vs ``peft``'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def megatron_peft_logits(hf_folder: Path, checkpoint: Path, ids: torch.Tensor, tp: int = 1) -> torch.Tensor:
    """Logits of the base ``hf_folder`` plus ``checkpoint``'s adapters at tensor parallel size ``tp``
    (every rank of a ``tp``-rank group calls it), in fp32."""
    import json

    from bridge_core.conversion.auto_bridge import AutoBridge
    from bridge_core.peft.apply import apply_peft
    from bridge_core.peft.workflows import load_checkpoint_adapters
    from bridge_core.runtime.cpu_support import cuda_on_cpu
    from bridge_core.runtime.inference import forward_logits
    from bridge_core.runtime.parallel import (
        ParallelSizes,
        destroy_model_parallel,
        ensure_model_parallel,
        ensure_process_group,
    )
    from bridge_core.training.config import PeftConfig

    ensure_process_group()
    document = json.loads((Path(checkpoint) / "peft.json").read_text())
    peft = PeftConfig(document["scheme"], document["rank"], document["alpha"], 0.0, document["targets"])
    with cuda_on_cpu():
        ensure_model_parallel(ParallelSizes(tp=tp))
        try:
            bridge = AutoBridge.from_hf_pretrained(hf_folder, torch_dtype=torch.float32)
            provider = bridge.to_megatron_provider(load_weights=True)
            provider.tensor_model_parallel_size = tp
            provider.finalize()
            model = provider.provide_distributed_model(
                wrap_with_ddp=False, pre_wrap_hook=[lambda chunks: apply_peft(chunks, peft, 0)]
            )
            load_checkpoint_adapters(model, checkpoint)
            return forward_logits(model, ids, bridge.hf.config.vocab_size).float().cpu()
        finally:
            destroy_model_parallel()


def peft_logits(hf_folder: Path, adapter: Path, ids: torch.Tensor) -> Any:
    """transformers' logits of ``hf_folder`` with ``peft`` loading ``adapter`` (fp32); the base's as well."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)
    with torch.no_grad():
        base = model(ids).logits
        adapted = PeftModel.from_pretrained(model, adapter)(ids).logits
    return adapted, base


PEFT_IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def check_peft(
    recipe: str, hf_folder: Path, work: Path, scheme: str, overrides: Sequence[str] = (), with_peft: bool = True
) -> dict[str, float]:
    """Train ``recipe`` (a ``*_peft`` one) with ``scheme`` for 3 steps on ``hf_folder`` in this process
    (one rank), export the adapter and merge it; return the max |logit differences| (fp32) of the Megatron
    model with its adapters vs ``peft`` (``peft``), vs the merged HF model (``merged``), vs the base (``base``,
    which must be large: the adapters changed the function). A plugin's tests assert on them. ``with_peft=False``:
    no ``peft`` comparison (where ``peft`` itself cannot load such an adapter)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from bridge_core.peft.workflows import export_adapter, merge_adapter
    from bridge_core.runtime.parallel import destroy_model_parallel
    from bridge_core.testing.compare import max_abs_diff
    from bridge_core.training.recipe import load_recipe
    from bridge_core.training.trainer import train

    save = Path(work) / f"{scheme}-run"
    settings = [
        f"peft.scheme={scheme}",
        "peft.rank=4",
        "peft.alpha=8",
        "data.kind=mock",
        "train.iters=3",
        "train.global_batch_size=2",
        "train.micro_batch_size=1",
        "train.seq_length=32",
        "train.eval_interval=none",
        "optimizer.lr=1e-2",
        "scheduler.lr_warmup_iters=0",
        "precision.dtype=fp32",
        "parallel.tp=1",
        "parallel.pp=1",
        "parallel.ep=1",
        "parallel.etp=none",
        f"checkpoint.save={save}",
        *overrides,
    ]
    try:
        train(load_recipe(recipe).with_overrides(settings), hf_model=hf_folder)
    finally:
        destroy_model_parallel()
    vocab = AutoConfig.from_pretrained(hf_folder).vocab_size
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    adapter = export_adapter(save, Path(work) / f"{scheme}-adapter")
    merged = merge_adapter(save, Path(work) / f"{scheme}-merged")
    ours = megatron_peft_logits(hf_folder, save, ids)
    with torch.no_grad():
        merged_logits = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32)(ids).logits
    out = {"merged": max_abs_diff(ours, merged_logits), "base": max_abs_diff(ours, base)}
    if with_peft:
        out["peft"] = max_abs_diff(ours, peft_logits(hf_folder, adapter, ids)[0])
    return out
