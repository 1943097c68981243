"""Process-group and model-parallel set-up, and this rank's place in it.

``ensure_model_parallel`` starts ``torch.distributed`` when the caller has not (NCCL with CUDA, gloo
without; a single process needs no launcher) and initialises megatron-core's model-parallel state.
"""

from __future__ import annotations

import atexit
import dataclasses
import os

import torch
import torch.distributed as dist

from bridge_core.errors import ConfigError
from bridge_core.runtime.cpu_support import apply_cpu_patches, cuda_available
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.runtime.parallelism import ParallelSizes as ParallelSizes  # the 1.0 name, the same class
from bridge_core.runtime.parallelism import rank as rank  # torch-free; imported from here by 1.0 callers
from bridge_core.runtime.parallelism import world_size as world_size


def ensure_process_group() -> None:
    """Initialise ``torch.distributed``: from torchrun's variables, or as a private one-process group."""
    if dist.is_initialized():
        return
    backend = "nccl" if cuda_available() else "gloo"
    if "WORLD_SIZE" in os.environ:  # torchrun, or bridgectl's own rank processes
        if cuda_available():
            local_world, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
            # Every rank sees all of the machine's GPUs (no per-rank CUDA_VISIBLE_DEVICES, as SLURM's
            # GPU binding sets): fewer than ranks would put two on one GPU, which NCCL refuses
            # ("Duplicate GPU detected").
            if gpus < local_world and "CUDA_VISIBLE_DEVICES" not in os.environ:
                raise ConfigError(
                    f"{local_world} ranks on this machine need one GPU each but {gpus} CUDA device"
                    f"{'s are' if gpus > 1 else ' is'} visible: use fewer ranks, or run on the CPU (gloo) "
                    "with CUDA_VISIBLE_DEVICES=''"
                )
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
        dist.init_process_group(backend)
    else:
        # One process, its store in memory: no port to pick, so none that another process can take
        # between picking and binding (EADDRINUSE, seen with commands run side by side). The environment
        # is left alone, so that a process started later from this one (e.g. a ``bridgectl`` subprocess)
        # does not believe it runs under torchrun.
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    # A group left to the interpreter's finalisation can abort the process: gloo's worker threads still
    # hold tensors whose release needs the GIL ("terminate called without an active exception",
    # pytorch/pytorch#190489). End it while Python is alive; a no-op if the caller ended it already.
    atexit.register(_destroy_group_at_exit)


def _destroy_group_at_exit() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current_sizes() -> Parallelism:
    """The sizes megatron-core's model-parallel state was initialised with."""
    from megatron.core import parallel_state as ps

    return Parallelism(
        tp=ps.get_tensor_model_parallel_world_size(),
        pp=ps.get_pipeline_model_parallel_world_size(),
        vp=ps.get_virtual_pipeline_model_parallel_world_size(),
        ep=ps.get_expert_model_parallel_world_size(),
        etp=ps.get_expert_tensor_parallel_world_size(),
    )


def ensure_model_parallel(sizes: Parallelism, seed: int = 1234) -> None:
    """Start the process group if needed and initialise model parallelism with ``sizes``.

    If model parallelism is already initialised with other sizes this is an error (call
    ``destroy_model_parallel`` first): silently re-initialising would break a caller's training set-up.
    """
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    ensure_process_group()
    apply_cpu_patches()
    sizes.check_world(dist.get_world_size())
    if ps.model_parallel_is_initialized():
        have = current_sizes()
        want = dataclasses.replace(sizes, etp=sizes.etp or sizes.tp)
        if have != want:
            raise ConfigError(
                f"model parallelism is already initialised as {have}, but the provider asks for {want}; "
                "call bridge_core.runtime.parallel.destroy_model_parallel() first"
            )
        return
    before = set(_process_groups())
    ps.initialize_model_parallel(
        tensor_model_parallel_size=sizes.tp,
        pipeline_model_parallel_size=sizes.pp,
        virtual_pipeline_model_parallel_size=sizes.vp,
        expert_model_parallel_size=sizes.ep,
        expert_tensor_parallel_size=sizes.etp,
    )
    _OWN_GROUPS[:] = [g for g in _process_groups() if g not in before]
    if cuda_available():
        tensor_parallel.model_parallel_cuda_manual_seed(seed)
    else:
        torch.manual_seed(seed)


def destroy_model_parallel() -> None:
    """Tear down megatron-core's model-parallel state (the process group stays).

    In a one-process world the groups ``ensure_model_parallel`` made are destroyed too: megatron-core
    only forgets them, and each gloo group keeps its threads (about 17 groups and 50 threads per
    set-up; a test process doing it hundreds of times reached 5,500 threads spinning in the kernel).
    With peers they are left alone: a rank destroying a group a slower peer still uses aborts it."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    groups, _OWN_GROUPS[:] = list(_OWN_GROUPS), []
    if not dist.is_initialized() or dist.get_world_size() != 1:
        return
    for group in groups:
        if group in _process_groups():
            dist.destroy_process_group(group)


_OWN_GROUPS: list = []


def _process_groups() -> list:
    """Every process group torch.distributed holds now (none when it is not initialised)."""
    if not dist.is_initialized():
        return []
    return list(dist.distributed_c10d._world.pg_map)
