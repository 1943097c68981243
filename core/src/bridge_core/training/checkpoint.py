"""Training checkpoints in the Megatron-LM ``torch_dist`` layout ``bridgectl import`` writes.

``<save>/iter_<N>/`` holds the model (same keys as an import, so ``bridgectl export`` reads it as
is), the optimizer, the LR scheduler, the RNG state, the iteration and consumed samples, and the
resolved recipe (``training_config.json``). ``<save>/run_config.json``, ``provenance.json`` and
``tokenizer/`` describe the model; ``latest_checkpointed_iteration.txt`` names the newest complete
iteration. Each iteration folder is written into a temporary sibling and renamed into place; the
tracker is replaced atomically after it, so a killed run leaves the last complete checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core import parallel_state as ps
from megatron.core.dist_checkpointing.mapping import ShardedObject

from bridge_core.checkpoints.checkpoint_format import (
    CONTENT_METADATA,
    PROVENANCE,
    RUN_CONFIG,
    TOKENIZER_DIR,
    TRACKER,
    load_megatron_checkpoint,
    megatron_args,
    model_keys,
    run_config_document,
)
from bridge_core.checkpoints.checkpoint_load import read_common_state, safe_dist_load
from bridge_core.checkpoints.megatron_checkpoint import _shared_atomic_dir, _SyncSaveStrategy
from bridge_core.checkpoints.output_dir import fsync_path
from bridge_core.errors import CheckpointError
from bridge_core.peft.document import PEFT_FILE, read_peft_document
from bridge_core.runtime.chunks import unwrap_chunks
from bridge_core.runtime.parallel import rank

TRAINING_CONFIG = "training_config.json"


def iter_dir(save: Path, iteration: int) -> Path:
    return save / f"iter_{iteration:07d}"


def _metadata(sharding: str) -> dict:
    # Megatron-Bridge's values; megatron-core's default (fully_sharded_model_space) fails to save
    # without Apex/TE ("ShardedTensor.flattened_range is not supported").
    return {**CONTENT_METADATA, "distrib_optim_sharding_type": sharding}


def _rng_object() -> ShardedObject:
    """This rank's RNG state, one object per (pipeline, tensor) rank as Megatron-LM stores it."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state: dict[str, Any] = {"torch_rng_state": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng_state"] = torch.cuda.get_rng_state()
        state["rng_tracker_states"] = get_cuda_rng_tracker().get_states()
    pp, tp = ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()
    where = (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank())
    return ShardedObject("rng_state", [state], (pp, tp), where, replica_id=ps.get_data_parallel_rank())


def _set_rng(objects: list) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = objects[0]
    torch.set_rng_state(state["torch_rng_state"])
    if torch.cuda.is_available() and "cuda_rng_state" in state:
        torch.cuda.set_rng_state(state["cuda_rng_state"])
        get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


def _state(model: list, optimizer: Any, metadata: dict, loading: bool, adapters_only: bool = False) -> dict:
    """The sharded state to save or load; ``adapters_only``: of the model, the PEFT adapters alone."""
    from bridge_core.peft.apply import adapter_state

    chunks = unwrap_chunks(model)
    state = {
        key: chunk.sharded_state_dict(metadata=dict(metadata)) for key, chunk in zip(model_keys(len(chunks)), chunks)
    }
    if adapters_only:
        state = {key: adapter_state(value) for key, value in state.items()}
    model_state = dict(state)  # the optimizer maps its parameters through the model's sharded tensors
    kwargs = {"is_loading": True} if loading else {}
    state["optimizer"] = optimizer.sharded_state_dict(model_state, metadata=dict(metadata), **kwargs)
    state["rng_state"] = _rng_object()
    return state


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temporary file, fsync, rename, fsync of the folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    fsync_path(tmp)
    tmp.replace(path)
    fsync_path(path.parent)


def save_training_checkpoint(
    save: str | os.PathLike,
    iteration: int,
    *,
    model: list,
    optimizer: Any,
    scheduler: Any,
    provider: Any,
    consumed_samples: int,
    recipe: dict,
    provenance: dict,
    tokenizer_files: list[Path],
    sharding: str,
    keep_last_n: int | None,
    peft: dict | None = None,
) -> Path:
    """Write ``<save>/iter_<iteration>`` and point the tracker at it (every rank calls it).

    ``peft`` (a ``peft.json`` document): the model part holds the adapters only.
    """
    save = Path(save)
    target = iter_dir(save, iteration)
    metadata = _metadata(sharding)
    world = dist.get_world_size()
    run = {"command": "train", "recipe": recipe["name"], "iteration": iteration}
    documents = {
        RUN_CONFIG: json.dumps(run_config_document(provider, run, world), indent=2) + "\n",
        PROVENANCE: json.dumps(provenance, indent=2) + "\n",
    }
    training = {
        "iteration": iteration,
        "consumed_train_samples": consumed_samples,
        "world_size": world,
        "recipe": recipe,
    }
    state = _state(model, optimizer, metadata, loading=False, adapters_only=peft is not None)
    if peft is not None:
        documents[PEFT_FILE] = json.dumps(peft, indent=2) + "\n"
    args = megatron_args(provider, world, tokenizer=bool(tokenizer_files))
    args.iteration, args.consumed_train_samples = iteration, consumed_samples
    args.no_save_optim, args.no_save_rng = False, False
    args.use_distributed_optimizer = _is_distributed(optimizer)
    state.update(
        checkpoint_version=3.0,
        iteration=iteration,
        args=args,
        opt_param_scheduler=scheduler.state_dict(),
        consumed_train_samples=consumed_samples,
        num_floating_point_operations_so_far=0,
    )
    with _shared_atomic_dir(target, True, lambda tmp: None) as tmp:
        dist_checkpointing.save(state, str(tmp), sharded_strategy=_SyncSaveStrategy(), content_metadata=metadata)
        if rank() == 0:
            (tmp / TRAINING_CONFIG).write_text(json.dumps(training, indent=2) + "\n")
    if rank() == 0:
        for name, text in documents.items():
            _write_text(save / name, text)
        if tokenizer_files and not (save / TOKENIZER_DIR).is_dir():
            tokenizer = save / f".{TOKENIZER_DIR}.tmp-{os.getpid()}"
            tokenizer.mkdir(exist_ok=True)
            for file in tokenizer_files:
                shutil.copy2(file, tokenizer / Path(file).name)
            tokenizer.rename(save / TOKENIZER_DIR)
        _write_text(save / TRACKER, str(iteration))
        if keep_last_n:
            _prune(save, keep_last_n)
    dist.barrier()
    return target


def _is_distributed(optimizer: Any) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return any(isinstance(o, DistributedOptimizer) for o in getattr(optimizer, "chained_optimizers", [optimizer]))


def _prune(save: Path, keep: int) -> None:
    folders = sorted(p for p in save.glob("iter_*") if p.is_dir() and p.name[5:].isdigit())
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _check_same_kind(load: str | os.PathLike, peft: Any) -> None:
    """A PEFT run resumes a PEFT checkpoint with the same adapter shape; a full run a full one."""
    saved = read_peft_document(load)
    if saved is None and peft is not None:
        raise CheckpointError(
            f"{load}: holds a full fine-tuning run, not adapters; resume it without peft.scheme, or start "
            "from its weights with --megatron-path"
        )
    if saved is not None and peft is None:
        raise CheckpointError(f"{load}: holds PEFT adapters ({PEFT_FILE}); resume it with its peft.* settings")
    if saved is not None:
        mine = {"scheme": peft.scheme, "rank": peft.rank, "targets": list(peft.targets)}
        theirs = {k: saved[k] for k in mine}
        if mine != theirs:
            raise CheckpointError(f"{load}: its adapters are {theirs}, this run's {mine}; resume with the same peft.*")


def saved_iteration(save: str | os.PathLike | None) -> int | None:
    """The iteration a folder's tracker names, or None when it holds no training checkpoint."""
    if save is None or not (Path(save) / TRACKER).is_file():
        return None
    info = load_megatron_checkpoint(save)
    return info.iteration if (info.weights_dir / TRAINING_CONFIG).is_file() else None


def check_save_folder(save: str | os.PathLike) -> None:
    """Refuse a ``checkpoint.save`` folder that holds something other than a training run (e.g. an import)."""
    from bridge_core.training.metrics import METRICS

    folder = Path(save)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"checkpoint.save={folder}: exists and is not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if (folder / TRACKER).is_file() and saved_iteration(folder) is not None or (folder / METRICS).is_file():
        return
    raise CheckpointError(
        f"checkpoint.save={folder}: the folder is not empty and holds no training run; pass an empty or new "
        "folder (to start from a checkpoint's weights, use --megatron-path)"
    )


def _adam_steps(optimizer: Any) -> set[float]:
    steps = set()
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        for s in inner.state.values() if inner is not None else []:
            if "step" in s:
                steps.add(float(s["step"]))
    return steps


def _prepare_distributed_optimizer(optimizer: Any) -> list[Any]:
    """Workaround for megatron-core without Apex/TE (TRAINING.md §3b), step 1: a fresh
    ``DistributedOptimizer`` has no Adam state, and building its loading state dict asserts on the
    missing ``step``. Create the state (zeros, step 0); the real values are loaded over it."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    dist_opts = [
        o for o in getattr(optimizer, "chained_optimizers", [optimizer]) if isinstance(o, DistributedOptimizer)
    ]
    for opt in dist_opts:
        inner = opt.optimizer
        opt.init_state_fn(inner, opt.config)
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p].setdefault("step", torch.tensor(0.0))
    return dist_opts


def _load_optimizer(optimizer: Any, loaded: dict, dist_opts: list[Any]) -> None:
    """Steps 3-5: load without the placeholder ``step`` (dp_reshardable would copy 0 back; fully_reshardable
    raises KeyError), then set every Adam state's step from the checkpoint's param_groups."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not dist_opts:
        optimizer.load_state_dict(loaded)
        return

    def skipping_step(opt: Any, original: Any) -> Any:
        def set_states(model_param: Any, tensors: dict) -> None:
            group_index, group_order = opt.model_param_group_index_map[model_param]
            state = opt.optimizer.state[opt.optimizer.param_groups[group_index]["params"][group_order]]
            step = state.pop("step", None)  # neither copied from the placeholder nor into it
            try:
                original(model_param, {k: v for k, v in tensors.items() if k != "step"})
            finally:
                if step is not None:
                    state["step"] = step

        return set_states

    originals = {}
    for opt in dist_opts:
        originals[opt] = opt._set_main_param_and_optimizer_states
        opt._set_main_param_and_optimizer_states = skipping_step(opt, originals[opt])
        for s in opt.optimizer.state.values():
            s.pop("step", None)
    try:
        with torch.no_grad():
            optimizer.load_state_dict(loaded)
    finally:
        for opt in originals:
            del opt._set_main_param_and_optimizer_states  # the class's method again
    groups = _saved_param_groups(loaded)
    steps = {g["step"] for g in groups if "step" in g}
    if len(steps) != 1:
        raise CheckpointError(
            f"the checkpoint's optimizer param_groups carry {len(steps)} different Adam steps: {steps}"
        )
    step = float(steps.pop())
    for opt in dist_opts:
        assert isinstance(opt, DistributedOptimizer)
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                opt.optimizer.state[p]["step"] = torch.tensor(step)


def _saved_param_groups(loaded: dict) -> list[dict]:
    """Every ``param_groups`` entry of a loaded (possibly chained) optimizer state dict."""
    out: list[dict] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if isinstance(value.get("optimizer"), dict) and "param_groups" in value["optimizer"]:
                out.extend(value["optimizer"]["param_groups"])
                return
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(loaded)
    return out


def load_training_checkpoint(
    load: str | os.PathLike, *, model: list, optimizer: Any, scheduler: Any, sharding: str, peft: Any = None
) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``load``'s latest iteration (every rank).

    Returns the saved ``training_config.json`` (iteration, consumed samples, recipe). The Adam step
    after the load is checked against the iteration: a silent reset raises ``CheckpointError``.
    """
    info = load_megatron_checkpoint(load)
    weights = info.weights_dir
    config_file = weights / TRAINING_CONFIG
    if not config_file.is_file():
        raise CheckpointError(
            f"{config_file}: missing; {load} is not a training checkpoint "
            "(use --megatron-path to start from its weights)"
        )
    training = json.loads(config_file.read_text())
    _check_same_kind(load, peft)
    common = read_common_state(weights)
    saved_args = common.get("args")
    metadata = common.get("content_metadata") or _metadata(sharding)
    saved_sharding = metadata.get("distrib_optim_sharding_type", sharding)
    same_layout = saved_args is not None and (
        getattr(saved_args, "tensor_model_parallel_size", None) == ps.get_tensor_model_parallel_world_size()
        and getattr(saved_args, "pipeline_model_parallel_size", None) == ps.get_pipeline_model_parallel_world_size()
    )
    distributed = bool(getattr(saved_args, "use_distributed_optimizer", False))
    if saved_args is not None and not same_layout and distributed and saved_sharding == "dp_reshardable":
        tp, pp = saved_args.tensor_model_parallel_size, saved_args.pipeline_model_parallel_size
        raise CheckpointError(
            f"{weights}: its distributed-optimizer state was saved with dp_reshardable at TP={tp} PP={pp}; "
            "resume at those sizes, or save with optimizer.dist_ckpt_sharding=fully_reshardable to change them"
        )
    dist_opts = _prepare_distributed_optimizer(optimizer)
    layout = {**metadata, "distrib_optim_sharding_type": saved_sharding}
    state = _state(model, optimizer, layout, loading=True, adapters_only=peft is not None)
    if not same_layout:
        state.pop("rng_state")  # stored per (pipeline, tensor) rank: not restorable at another layout
    try:
        loaded = safe_dist_load(state, weights)
    except Exception as exc:
        raise CheckpointError(
            f"{weights}: cannot resume from it: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    chunks = unwrap_chunks(model)
    for key, chunk in zip(model_keys(len(chunks)), chunks):
        result = chunk.load_state_dict(loaded[key], strict=peft is None)
        if peft is not None and result.unexpected_keys:
            raise CheckpointError(f"{weights}: unexpected adapter tensors {result.unexpected_keys[:3]}")
    _load_optimizer(optimizer, loaded["optimizer"], dist_opts)
    scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if "rng_state" in loaded:
        _set_rng(loaded["rng_state"])
    iteration = int(training["iteration"])
    steps = _adam_steps(optimizer)
    if iteration > 0 and steps and steps != {float(iteration)}:
        raise CheckpointError(
            f"{weights}: after loading, the optimizer's Adam step is {sorted(steps)} but the checkpoint is at "
            f"iteration {iteration} (megatron-core optimizer state not restored)"
        )
    return training
