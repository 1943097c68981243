"""HF safetensors -> Megatron-LM ``torch_dist`` without building the model (memory independent of its size).

The target layout comes from the provider's model built on the ``meta`` device: its sharded state
dict names every stored tensor with its global shape, which the ``torch_dist`` format keeps whatever
the TP/PP/EP layout (only the padded vocabulary depends on TP, and it is set to the target's). That
state dict goes through megatron-core's own ``dist_checkpointing.save`` and torch's filesystem
writer; only the data are lazy: the planner resolves each stored tensor when the writer reaches it
(read its HF tensors, map them, slice) and frees it once written. With several worker processes
each writes a balanced share of the tensors (``bridgectl import --workers N``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem, _split_by_size_and_type

from bridge_core.checkpoints.megatron_checkpoint import (
    _SyncSaveStrategy,
    _writer_thread_errors,
    save_megatron_checkpoint,
)
from bridge_core.conversion.auto_bridge import AutoBridge
from bridge_core.conversion.finite import warn_nonfinite
from bridge_core.conversion.import_plan import ImportPlan
from bridge_core.conversion.layout_plan import meta_session
from bridge_core.conversion.stream_buffers import Writeback
from bridge_core.conversion.stream_reads import Key, Piece, PieceResolver
from bridge_core.conversion.tasks import Task
from bridge_core.errors import CoverageError
from bridge_core.progress import Progress, stage
from bridge_core.runtime.memory import release_large_frees
from bridge_core.runtime.parallel import rank, world_size
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.timing import timeline


def _pieces(sharded: Any, tasks: Iterable[Task]) -> dict[Key, Piece]:
    """(stored key, global offset) -> its piece. The ShardedTensors' data are the meta parameters or
    views of them (the gate/up halves of ``linear_fc1``), matched by identity."""
    by_param = {id(t.param.tensor): t for t in tasks if not t.tied_copy}
    out = {}
    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor):
            continue
        base = sh.data if sh.data._base is None else sh.data._base
        task = by_param.get(id(base))
        if task is None:
            raise CoverageError(f"{sh.key}: a stored tensor of no mapped Megatron parameter")
        out[(sh.key, tuple(sh.global_offset))] = Piece(
            task, tuple(sh.data.size()), tuple(sh.data.stride()), sh.data.storage_offset()
        )
    return out


def _spread(sharded: Any, me: int, workers: int) -> None:
    """Give each worker a share of the stored tensors, balanced by bytes (the same on every worker):
    a worker keeps as main replica (and writes) only its own; objects stay with worker 0."""
    tensors = sorted(
        (sh for sh in nested_values(sharded) if isinstance(sh, ShardedTensor)),
        key=lambda sh: (-sh.data.numel() * sh.data.element_size(), sh.key, tuple(sh.global_offset)),
    )
    load = [0] * workers
    for sh in tensors:
        owner = min(range(workers), key=lambda w: (load[w], w))
        load[owner] += sh.data.numel() * sh.data.element_size()
        sh.replica_id = 0 if owner == me else 1
    for obj in nested_values(sharded):
        if isinstance(obj, ShardedObject):
            obj.replica_id = 0 if me == 0 else 1


def _key(write_item: Any) -> Key:
    return (write_item.index.fqn, tuple(write_item.index.offset or ()))  # objects have no offset


class _LazyPlanner(MCoreSavePlanner):
    """megatron-core's planner whose meta tensors are resolved when written, and released after.

    torch's writer keeps every tensor it wrote to a file referenced until the file closes; the
    previous tensor of each writer thread is released (its storage given to the resolver's pool, or
    emptied) at the thread's next request, when it has been written. ``thread_count`` > 1 keeps torch
    on its serial loader, which asks for a tensor only once the one before it is written.
    """

    resolver: PieceResolver

    def resolve_data(self, write_item: Any) -> Any:
        key = _key(write_item)
        if key not in self.resolver.pieces:  # not a parameter: an object (extra state), as stored
            return super().resolve_data(write_item)
        # (a parameter megatron-core creates on an explicit device, e.g. the learnable softmax offset, is
        # not on the meta device but uninitialised memory: resolved like the others)
        obj = self.lookup_object(write_item.index)
        local = self.__dict__.setdefault("_writer_threads", threading.local())
        previous = getattr(local, "previous", None)
        if previous is not None:
            self.resolver.release(previous)
        tensor = self.resolver(key, obj.shape)
        local.previous = tensor
        return tensor


class _WritebackFileSystem(FileSystem):
    """torch's local file system whose written files start their writeback every 64 MiB (``Writeback``)."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "wb":
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        with io.BufferedWriter(_WritebackFile(path, "wb"), buffer_size=1 << 20) as stream:
            yield cast(io.IOBase, stream)


class _WritebackFile(io.FileIO):
    def __init__(self, path: str | os.PathLike, mode: str):
        super().__init__(path, mode)
        self.writeback = Writeback(self.fileno())
        self.end = 0

    def write(self, data: Any) -> int:
        n = super().write(data) or 0
        self.end += n
        self.writeback.written(self.end)
        return n


class _Writer(FileSystemWriter):
    """torch's filesystem writer telling the resolver which pieces each writer thread will ask for, in
    order (torch's own split of the plan into one file per thread)."""

    resolver: PieceResolver

    def write_data(self, plan: Any, planner: Any) -> Any:
        buckets = _split_by_size_and_type(self.thread_count, plan.items) if self.single_file_per_rank else []
        self.resolver.order([[_key(item) for item in bucket] for bucket in buckets])
        return super().write_data(plan, planner)


class StreamingSaveStrategy(_SyncSaveStrategy):
    """The torch_dist writer for a meta-device model: values are read from the HF files when written."""

    def __init__(self, tasks: list[Task], bridge: Any, source: Any, config: Any, progress: Progress | None):
        super().__init__()
        self.tasks, self.bridge, self.source, self.config, self.progress = tasks, bridge, source, config, progress
        self.resolver: PieceResolver | None = None

    def save(self, sharded_state_dict: Any, checkpoint_dir: str | Path) -> None:
        resolver = PieceResolver(
            _pieces(sharded_state_dict, self.tasks), self.bridge, self.source, self.config, self.progress
        )
        self.resolver = resolver
        _spread(sharded_state_dict, rank(), world_size())
        mine = [
            (sh.key, tuple(sh.global_offset))
            for sh in nested_values(sharded_state_dict)
            if isinstance(sh, ShardedTensor) and sh.replica_id == 0
        ]
        resolver.expect(mine)
        if self.progress is not None:
            names = {resolver.pieces[k].task.param.global_name for k in mine}
            params = [t.param.tensor for t in self.tasks if t.param.global_name in names and not t.tied_copy]
            self.progress.begin(len(params), sum(p.numel() * p.element_size() for p in params))
        state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        writer = _Writer(checkpoint_dir, thread_count=self.thread_count)
        writer.fs = _WritebackFileSystem()
        writer.resolver = resolver
        try:
            with _writer_thread_errors() as errors:
                torch.distributed.checkpoint.save(
                    mcore_to_pyt_state_dict(state, False), storage_writer=writer, planner=self.planner()
                )
        finally:
            resolver.close()
        if errors:  # a writer thread failed (its file is incomplete) while this thread finished
            raise errors[0]

    def planner(self) -> Any:
        planner = _LazyPlanner(dedup_replicated_tensors=False, flatten_state_dict=False)
        assert self.resolver is not None, "save() sets the resolver first"
        planner.resolver = self.resolver
        return planner


def _build_provider(target: Any) -> Any:
    """The target provider at TP=PP=EP=1 with the target's padded vocabulary: the same stored tensors."""
    build = copy.deepcopy(target)
    Parallelism().apply(build)
    build.padded_vocab_size = target.vocab_size_with_padding
    return build


def stream_import(
    hf_model: str | Path,
    megatron_path: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    source: str | None = None,
    accept_config: Iterable[str] = (),
) -> Path:
    """HF folder -> Megatron-LM ``torch_dist`` checkpoint for layout ``parallel``, no model built (every
    worker calls it; ``bridgectl import`` starts them)."""
    from bridge_core.checkpoints.output_dir import check_output_dir
    from bridge_core.conversion.jobs import hf_tensors, provenance, say

    check_output_dir(megatron_path, overwrite, "--megatron-path")
    release_large_frees()
    timeline().mark("loading libraries")
    accepted = sorted(set(accept_config))
    stage("import", "planning the Megatron checkpoint")
    bridge = AutoBridge.from_hf_pretrained(
        hf_model, trust_remote_code=trust_remote_code, torch_dtype=dtype, accept_config=accepted
    )
    target = parallel.apply(bridge.to_megatron_provider())
    target.perform_initialization = False
    weights = bridge.hf.weights
    workers = world_size()
    where = f" (worker 1 of {workers})" if workers > 1 else ""
    progress = Progress("import", enabled=rank() == 0, unit="Megatron parameters", stage="converting" + where)
    bridge.bridge.select_hf_layout(target, frozenset(weights.meta))  # recorded in run_config.json, as live
    with meta_session(_build_provider(target)) as (model, _):
        tasks, _, config = bridge._tasks([model], weights.meta)
        reads = ImportPlan.build(
            tasks,
            weights.meta,
            config,
            bridge.bridge.hf_config,
            owner=bridge.owner,
            dequantizes=bridge.bridge.dequantizes_hf_weights,
        )
        reads.check(reads.consumption())  # every worker plans the whole model: its reads are all of them
        target.finalize()
        timeline().mark("planning")
        strategy = StreamingSaveStrategy(tasks, bridge.bridge, weights, config, progress)
        path = save_megatron_checkpoint(
            [model],
            target,
            megatron_path,
            run_config={
                "command": "import",
                "parallelism": provenance(bridge, source or hf_model, parallel)["parallelism"],
                **({"accept_config": accepted} if accepted else {}),
            },
            provenance=provenance(bridge, source or hf_model, parallel),
            tokenizer_files=bridge.hf.side_files(),
            overwrite=overwrite,
            strategy=strategy,
            layout_world=parallel.world_size,
        )
    progress.finish()
    warn_nonfinite(strategy.resolver.scan.names() if strategy.resolver else [], "HF", workers)
    timeline().mark("converting")
    params = [t.param.tensor for t in tasks if not t.tied_copy]
    nbytes = sum(p.numel() * p.element_size() for p in params)
    read = hf_tensors(len(weights), weights.total_bytes)
    say(f"import: read {read} into {len(params)} Megatron parameters ({nbytes / 1e9:.2f} GB), streamed: no model built")
    say(f"import: wrote {path}; {timeline().summary()}")
    return path
