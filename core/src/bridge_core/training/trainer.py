"""The training loop: megatron-core composed, nothing of it re-implemented.

Model chunks from the bridge's provider wrapped in megatron-core's ``DistributedDataParallel``;
``get_megatron_optimizer`` (Adam/AdamW, optionally distributed) with its gradient clipping;
``OptimizerParamScheduler``; the microbatch calculator; ``get_forward_backward_func`` (no
pipelining, 1F1B, interleaved 1F1B); ``MockGPTDataset``/``GPTDataset`` through
``BlendedMegatronDatasetBuilder``. Every rank calls ``train``; rank 0 prints and writes metrics.
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError
from bridge_core.model.mcore_versions import reset_moe_metrics
from bridge_core.peft.document import peft_document
from bridge_core.runtime.cpu_support import cuda_available, cuda_on_cpu
from bridge_core.runtime.parallel import ensure_process_group, rank
from bridge_core.training.config import TrainingConfig
from bridge_core.training.data import batches, build_datasets, check_dataset_helpers
from bridge_core.training.flops import FlopsUnsupported, model_training_flops_per_token
from bridge_core.training.metrics import MetricsLog, ProgressPrinter, peak_memory_gib, progress_line
from bridge_core.training.model_source import ModelSource, model_source
from bridge_core.training.padded_vocab import mask_padded_vocabulary
from bridge_core.training.recipe import Recipe


@dataclasses.dataclass
class TrainResult:
    """What a run did: the logged losses by step, the last iteration, the checkpoint folder, and the
    ``metrics.jsonl`` records of this run's steps (on every rank; written to the file by rank 0)."""

    losses: dict[int, float]
    iteration: int
    save: Path | None
    records: list[dict] = dataclasses.field(default_factory=list)


def say(text: str) -> None:
    if rank() == 0:
        print(text, flush=True)


# -- provider -----------------------------------------------------------------------------------


def _dtype(config: TrainingConfig) -> torch.dtype:
    want = config.precision.dtype
    if want == "auto":
        return torch.bfloat16 if cuda_available() else torch.float32
    return torch.bfloat16 if want == "bf16" else torch.float32


def _max_positions(source: ModelSource) -> int | None:
    value = getattr(source.bridge.hf_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def configure_provider(source: ModelSource, config: TrainingConfig) -> Any:
    """Apply the recipe's model overrides, parallel sizes, precision and recompute; check before any step."""
    provider = source.provider
    fields = {f.name for f in dataclasses.fields(provider)}
    for name, value in config.model.items():
        if name not in fields:
            close = (
                ", ".join(sorted(f for f in fields if name.split("_")[0] in f)[:8]) or "num_layers, hidden_size, ..."
            )
            raise ConfigError(f"model.{name}: not a setting of the model provider (e.g. {close})")
        setattr(provider, name, value)
    p = config.parallel
    if p.cp > 1:
        raise ConfigError(
            f"parallel.cp={p.cp}: context parallelism needs Transformer Engine's attention, which is not installed"
        )
    provider.tensor_model_parallel_size = p.tp
    provider.pipeline_model_parallel_size = p.pp
    if p.pp == 1:  # a recipe's uneven stage split (e.g. DeepSeek-V3's 4 + 14 x 4 + 1) means nothing on one stage
        provider.num_layers_in_first_pipeline_stage = provider.num_layers_in_last_pipeline_stage = None
    provider.virtual_pipeline_model_parallel_size = p.vpp
    provider.expert_model_parallel_size = p.ep
    provider.expert_tensor_parallel_size = p.etp
    provider.context_parallel_size = p.cp
    provider.sequence_parallel = p.sequence_parallel
    dtype = _dtype(config)
    provider.params_dtype = dtype
    provider.pipeline_dtype = dtype if p.pp > 1 else None
    provider.bf16, provider.fp16 = dtype == torch.bfloat16, False
    r = config.recompute
    provider.recompute_granularity = r.granularity
    provider.recompute_method = r.method
    provider.recompute_num_layers = r.num_layers
    provider.calculate_per_token_loss = True  # the loss is a mean over all tokens of the global batch
    if not cuda_available():
        # gloo's batched isend/irecv pairs the interleaved schedule's messages wrongly (microbatches
        # after the first group get another one's activations: measured); separate sends are exact.
        provider.batch_p2p_comm = False
    positions = _max_positions(source)
    if positions is not None and config.train.seq_length > positions:
        raise ConfigError(
            f"train.seq_length={config.train.seq_length} is longer than the model's {positions} positions "
            f"(max_position_embeddings of {source.label})"
        )
    provider.finalize()
    return provider


def half_precision(chunks: list, config: Any) -> list:
    """megatron-core's ``Float16Module`` around each chunk, as Megatron-LM wraps a bf16 model.

    Every parameter becomes bf16 (the norms too, which megatron-core builds in fp32) and the last
    stage's output is fp32. Without it, the plain (non-distributed) mixed-precision optimizer cannot
    save its state: it maps only bf16 parameters to the model's sharded tensors.
    """
    from megatron.core.transformer.module import Float16Module

    return [Float16Module(config, chunk) for chunk in chunks]


def _core_attention(provider: Any, config: TrainingConfig) -> str:
    """Apply ``attention.core_attention`` to the provider; say what ``auto`` resolved to."""
    from bridge_core.modeling.specs import use_core_attention

    choice = config.attention.core_attention
    resolved = use_core_attention(provider, choice)
    names = {"sdpa": "SDPACoreAttention", "local": "the provider's layer spec", "te": "Transformer Engine's"}
    say(f"train: core attention {resolved} ({names[resolved]}{', from auto' if choice == 'auto' else ''})")
    return resolved


def _flops_per_token(source: ModelSource, provider: Any, seq_length: int, frozen: bool) -> float | None:
    """Training FLOPs per token (``bridge_core.training.flops``), or None with a note when not countable."""
    try:
        return model_training_flops_per_token(provider, seq_length, source.bridge.bridge, frozen_weights=frozen)
    except FlopsUnsupported as exc:
        say(f"train: TFLOP/s not reported: {exc}")
        return None


def _add_adapters(chunks: list, source: ModelSource, peft: Any, seed: int, resolved: list) -> list:
    """LoRA/DoRA on the loaded base (``peft.adapter``: an HF PEFT adapter's, with its weights)."""
    from bridge_core.peft.apply import apply_peft
    from bridge_core.peft.load import load_hf_adapter

    if peft.adapter:
        settings = load_hf_adapter(source.bridge, chunks, peft.adapter, seed)
        resolved.append(dataclasses.replace(settings, adapter=peft.adapter))
        say(f"train: adapters from {peft.adapter} ({settings.scheme}, rank {settings.rank}, alpha {settings.alpha:g})")
    else:
        apply_peft(chunks, peft, seed)
        resolved.append(peft)
    return chunks


# -- optimizer and schedule ---------------------------------------------------------------------


def build_optimizer(model: list, config: TrainingConfig, dtype: torch.dtype) -> tuple[Any, Any]:
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o, s, t = config.optimizer, config.scheduler, config.train
    opt_config = OptimizerConfig(
        optimizer="adam",
        decoupled_weight_decay=o.name == "adamw",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.beta1,
        adam_beta2=o.beta2,
        adam_eps=o.eps,
        clip_grad=o.clip_grad,
        use_distributed_optimizer=o.use_distributed_optimizer,
        bf16=dtype == torch.bfloat16,
        params_dtype=dtype,
    )
    optimizer = get_megatron_optimizer(opt_config, model)
    gbs = t.global_batch_size
    decay = s.lr_decay_iters if s.lr_decay_iters is not None else t.iters
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=s.lr_warmup_iters * gbs,
        lr_decay_steps=decay * gbs,
        lr_decay_style=s.style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=t.iters * gbs,
        wd_incr_style=s.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=s.lr_wsd_decay_iters * gbs if s.lr_wsd_decay_iters else None,
        lr_wsd_decay_style=s.lr_wsd_decay_style,
    )
    return optimizer, scheduler


def _loss(loss_mask: torch.Tensor, output: torch.Tensor):
    """Per-token loss: (sum over unmasked tokens, their count, the pair for logging)."""
    mask = loss_mask.reshape(-1).float()
    total = torch.sum(output.float().reshape(-1) * mask)
    tokens = mask.sum().to(torch.int)
    return total, tokens, {"lm loss": torch.stack([total.detach(), mask.sum().detach()])}


def _forward_step(data_iterator, model):
    batch = next(data_iterator)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, partial(_loss, batch["loss_mask"])


def _reduce_loss(records: list[dict]) -> float:
    """The global batch's mean token loss, from the last pipeline stage's records, on every rank."""
    from megatron.core import parallel_state as ps

    pair = torch.zeros(2, dtype=torch.float64)
    for record in records:
        pair += record["lm loss"].detach().to("cpu", torch.float64)
    if cuda_available():
        pair = pair.cuda()
    dist.all_reduce(pair, group=ps.get_data_parallel_group(with_context_parallel=True))
    if ps.get_pipeline_model_parallel_world_size() > 1:  # only the last stage has losses
        dist.all_reduce(pair, group=ps.get_pipeline_model_parallel_group())
    return float(pair[0] / pair[1].clamp(min=1))


# -- the run ------------------------------------------------------------------------------------


def train(recipe: Recipe, hf_model: str | Path | None = None, megatron_path: str | Path | None = None) -> TrainResult:
    """Run ``recipe`` on this process's rank (every rank calls it)."""
    ensure_process_group()
    with cuda_on_cpu():
        return _train(recipe, hf_model, megatron_path)


def _train(recipe: Recipe, hf_model: Any, megatron_path: Any) -> TrainResult:
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.num_microbatches_calculator import (
        destroy_num_microbatches_calculator,
        get_num_microbatches,
        init_num_microbatches_calculator,
    )
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.utils import get_model_config

    from bridge_core.training import checkpoint as ckpt

    config, t = recipe.config, recipe.config.train
    world = dist.get_world_size()
    config.check(world, run=True)
    peft = config.peft if config.peft.scheme is not None else None
    if peft is not None and hf_model is None and megatron_path is None:
        raise ConfigError(
            f"peft.scheme={peft.scheme} trains adapters on an existing model: pass --hf-model HF_FOLDER or "
            "--megatron-path CKPT (the base)"
        )
    check_dataset_helpers()
    reset_moe_metrics()
    if config.checkpoint.save:
        ckpt.check_save_folder(config.checkpoint.save)
    source = model_source(recipe, hf_model, megatron_path)
    provider = configure_provider(source, config)
    attention = _core_attention(provider, config)
    if config.attention.compiled_rope:
        from bridge_core.modeling.compiled_rope import compile_rope

        compile_rope()
    flops_per_token = _flops_per_token(source, provider, t.seq_length, frozen=peft is not None)
    dtype = provider.params_dtype
    o = config.optimizer
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.precision.grad_reduce_in_fp32,
        use_distributed_optimizer=o.use_distributed_optimizer,
        overlap_grad_reduce=False,
        overlap_param_gather=False,
        check_for_nan_in_grad=True,
    )
    hooks = []
    resolved: list = []  # the adapters' settings once they are on the model (an HF adapter brings its own)
    load_weights = source.load_weights
    if load_weights is not None:
        hooks.append(lambda chunks: (load_weights(chunks), chunks)[1])
    if peft is not None:
        hooks.append(lambda chunks: _add_adapters(chunks, source, peft, t.seed, resolved))
    hooks.append(lambda chunks: mask_padded_vocabulary(chunks, provider.vocab_size))
    if provider.bf16:
        hooks.append(lambda chunks: half_precision(chunks, provider))
    model = provider.provide_distributed_model(
        ddp_config=ddp_config, wrap_with_ddp=True, pre_wrap_hook=hooks, seed=t.seed
    )
    optimizer, scheduler = build_optimizer(model, config, dtype)
    dp_size, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    destroy_num_microbatches_calculator()
    init_num_microbatches_calculator(rank(), None, t.global_batch_size, t.micro_batch_size, dp_size)

    save = Path(config.checkpoint.save) if config.checkpoint.save else None
    load = config.checkpoint.load or (str(save) if ckpt.saved_iteration(save) is not None else None)
    iteration, consumed = 0, 0
    if load is not None:
        saved = ckpt.load_training_checkpoint(
            load,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            sharding=o.dist_ckpt_sharding,
            peft=resolved[0] if resolved else None,
        )
        iteration, consumed = int(saved["iteration"]), int(saved["consumed_train_samples"])
        say(f"train: resumed from {load} at iteration {iteration} ({consumed} samples consumed)")

    model_config = get_model_config(model[0])
    model_config.finalize_model_grads_func = finalize_model_grads
    model_config.grad_scale_func = optimizer.scale_loss
    model_config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync

    train_ds, valid_ds = build_datasets(config, provider.vocab_size)
    n_micro = get_num_microbatches()
    data = [batches(train_ds, consumed, t.micro_batch_size, dp_rank, dp_size, n_micro) for _ in model]
    forward_backward = get_forward_backward_func()
    run = partial(
        forward_backward,
        forward_step_func=_forward_step,
        model=model,
        num_microbatches=n_micro,
        seq_length=t.seq_length,
        micro_batch_size=t.micro_batch_size,
        decoder_seq_length=t.seq_length,
    )
    recipe_doc = recipe.to_dict()
    if attention in ("sdpa", "local"):  # what "auto" resolved to ("te" stays "auto", a valid value)
        recipe_doc["config"]["attention"]["core_attention"] = attention
    metrics = MetricsLog(save, resume_step=iteration, enabled=rank() == 0)
    printer = ProgressPrinter(rank() == 0)
    losses: dict[int, float] = {}
    logged: list[dict] = []
    started, first = time.perf_counter(), iteration
    tokens_per_step = t.global_batch_size * t.seq_length

    def save_now(folder: Path) -> None:
        path = ckpt.save_training_checkpoint(
            folder,
            iteration,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            provider=provider,
            consumed_samples=consumed,
            recipe=recipe_doc,
            provenance=source.provenance,
            tokenizer_files=source.tokenizer_files,
            sharding=o.dist_ckpt_sharding,
            keep_last_n=config.checkpoint.keep_last_n,
            peft=None if peft is None else peft_document(resolved[0], hf_model, megatron_path),
        )
        printer.show(f"train: saved {path}")
        if printer.tty:
            printer.close()

    if iteration >= t.iters:
        say(f"train: {load} is already at iteration {iteration} of {t.iters}; nothing to do")
    while iteration < t.iters:
        step_start = time.perf_counter()
        for m in model:
            m.train()
            m.zero_grad_buffer()
        optimizer.zero_grad()
        records = run(data_iterator=data if len(data) > 1 else data[0], forward_only=False)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
        ok, grad_norm, _ = optimizer.step()
        if ok:
            scheduler.step(increment=t.global_batch_size)
        iteration += 1
        consumed += t.global_batch_size
        loss = _reduce_loss(records if ps.is_pipeline_last_stage(ignore_virtual=True) else [])
        seconds = time.perf_counter() - step_start
        losses[iteration] = loss
        tokens_per_s = tokens_per_step / seconds
        record = {
            "step": iteration,
            "loss": loss,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "skipped": not ok,
            "step_time_s": seconds,
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": tokens_per_s / world,
            "tflops_per_gpu": tokens_per_s * flops_per_token / world / 1e12 if flops_per_token else None,
            "peak_memory_gib": peak_memory_gib(),
            "consumed_samples": consumed,
        }
        if t.eval_interval and valid_ds is not None and iteration % t.eval_interval == 0:
            record["val_loss"] = _evaluate(forward_backward, model, valid_ds, config, dp_rank, dp_size, n_micro)
        metrics.write(record)
        logged.append(record)
        if iteration % config.logging.log_interval == 0 or iteration == t.iters:
            printer.show(progress_line(record, t.iters, time.perf_counter() - started, iteration - first))
        if save is not None and (
            iteration == t.iters
            or (config.checkpoint.save_interval and iteration % config.checkpoint.save_interval == 0)
        ):
            save_now(save)
    printer.close()
    destroy_num_microbatches_calculator()
    return TrainResult(losses, iteration, save, logged)


def _evaluate(
    forward_backward, model, dataset, config: TrainingConfig, dp_rank: int, dp_size: int, n_micro: int
) -> float:
    """Validation loss over ``eval_iters`` global batches, always from the split's first sample."""
    t = config.train
    for m in model:
        m.eval()
    data = [batches(dataset, 0, t.micro_batch_size, dp_rank, dp_size, n_micro) for _ in model]
    records: list[dict] = []
    from megatron.core import parallel_state as ps

    with torch.no_grad():
        for _ in range(t.eval_iters):
            out = forward_backward(
                forward_step_func=_forward_step,
                data_iterator=data if len(data) > 1 else data[0],
                model=model,
                num_microbatches=n_micro,
                seq_length=t.seq_length,
                micro_batch_size=t.micro_batch_size,
                decoder_seq_length=t.seq_length,
                forward_only=True,
            )
            records += out if ps.is_pipeline_last_stage(ignore_virtual=True) else []
    for m in model:
        m.train()
    return _reduce_loss(records)
