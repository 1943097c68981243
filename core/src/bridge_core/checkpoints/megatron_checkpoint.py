"""Megatron-LM ``torch_dist`` checkpoints: save model chunks, read the folder back, load at any TP/PP.

This module saves (``save_megatron_checkpoint``: a synchronous writer, no helper processes, into a
temporary sibling renamed into place) and is the public entry point for the rest:
``checkpoint_format`` holds the folder layout, ``run_config.json`` and the Megatron-LM ``args``;
``checkpoint_load`` loads the weights into a model (restricted unpickler, weights-only objects).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.torch import (
    MCoreSavePlanner,
    TorchDistSaveShardedStrategy,
    _replace_state_dict_keys_with_sharded_keys,
    mcore_to_pyt_state_dict,
)
from torch.distributed.checkpoint import FileSystemWriter

from bridge_core.checkpoints.checkpoint_format import (
    CONTENT_METADATA,
    ITER_DIR,
    ITERATION,
    PROVENANCE,
    RUN_CONFIG,
    TOKENIZER_DIR,
    TRACKER,
    CheckpointInfo,
    load_megatron_checkpoint,
    megatron_args,
    model_keys,
    provider_kwargs_from_run_config,
    provider_settings,
    run_config_document,
)
from bridge_core.checkpoints.checkpoint_load import load_weights_into
from bridge_core.checkpoints.output_dir import atomic_output_dir, writing_to
from bridge_core.errors import CheckpointError
from bridge_core.runtime.chunks import unwrap_chunks
from bridge_core.runtime.parallel import rank, world_size


def _from_rank0(value: Any) -> Any:
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_ok(ok: bool) -> bool:
    if world_size() == 1:
        return ok
    flags: list[Any] = [None] * world_size()
    dist.all_gather_object(flags, ok)
    return all(flags)


@contextlib.contextmanager
def _shared_atomic_dir(path: Path, overwrite: bool, prepare: Any) -> Iterator[Path]:
    """``atomic_output_dir`` for all ranks: rank 0 makes the temporary folder and tells the others.

    ``prepare(tmp)`` runs on rank 0 first (checks; may raise ``CheckpointError``), and its error is
    raised on every rank. The folder is renamed into place only if the body succeeded on every rank,
    and every rank returns only once it is in place (or raises if rank 0 could not move it).
    """
    body_ok = False
    try:
        with contextlib.ExitStack() as stack:
            tmp, error = None, None
            if rank() == 0:
                try:
                    tmp = stack.enter_context(atomic_output_dir(path, overwrite, what="Megatron checkpoint folder"))
                    prepare(tmp)
                except Exception as exc:
                    error = str(exc) if isinstance(exc, CheckpointError) else f"{path}: cannot write it: {exc}"
            tmp, error = _from_rank0((tmp and str(tmp), error))
            if error:
                raise CheckpointError(error)  # inside the stack: rank 0's temporary folder is removed
            failure = None
            try:
                yield Path(tmp)
            except BaseException as exc:
                failure = exc
            if not _all_ok(failure is None):
                raise failure or CheckpointError(f"{path}: the save failed on another rank; nothing was written")
            body_ok = True
        moved = None  # rank 0 renamed the folder into place when leaving the stack
    except BaseException as exc:
        if not body_ok:
            raise
        moved = exc
    if not _all_ok(moved is None):
        raise moved or CheckpointError(f"{path}: rank 0 could not move the finished checkpoint into place")


# -- save ---------------------------------------------------------------------------------------


class _SyncSaveStrategy(TorchDistSaveShardedStrategy):
    """The torch_dist format written in this process (the default strategy spawns writer processes).

    Two writer threads per rank (megatron-core's own default for torch_dist): each rank writes two
    files, ``__<rank>_0.distcp`` and ``__<rank>_1.distcp``, which torch's reader and Megatron-LM read
    like one. torch DCP fsyncs every file before the save returns.
    """

    planner_class: type = MCoreSavePlanner

    def __init__(self) -> None:
        super().__init__("torch_dist", 1, thread_count=2)

    def save(self, sharded_state_dict: Any, checkpoint_dir: str | Path) -> None:
        state, _, _ = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, self.keep_only_main_replica)
        with _writer_thread_errors() as errors:
            torch.distributed.checkpoint.save(
                mcore_to_pyt_state_dict(state, False),
                storage_writer=FileSystemWriter(checkpoint_dir, thread_count=self.thread_count),
                planner=self.planner(),
            )
        if errors:  # a writer thread failed (its file is incomplete) while this thread finished
            raise errors[0]

    def planner(self) -> Any:
        return self.planner_class(dedup_replicated_tensors=not self.keep_only_main_replica, flatten_state_dict=False)


@contextlib.contextmanager
def _writer_thread_errors() -> Iterator[list[BaseException]]:
    """Collect the exceptions of threads that end while inside (torch's writer threads) instead of
    printing their tracebacks; the caller raises the first one."""
    errors: list[BaseException] = []
    previous, before = threading.excepthook, set(threading.enumerate())

    def keep(args: Any) -> None:
        if args.exc_value is not None:
            errors.append(args.exc_value)

    threading.excepthook = keep
    try:
        yield errors
    finally:
        for thread in set(threading.enumerate()) - before:  # torch does not join them when it fails
            if getattr(getattr(thread, "_target", None), "__name__", "") == "_write_files_from_queue":
                thread.join()
        threading.excepthook = previous


def _json_text(document: Any, file: Path) -> str:
    try:
        return json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{file}: cannot write it as JSON: {exc}") from exc


def save_megatron_checkpoint(
    model_chunks: Any,
    provider: Any,
    path: str | os.PathLike,
    *,
    run_config: dict,
    provenance: dict,
    tokenizer_files: list[Path],
    overwrite: bool = False,
    strategy: _SyncSaveStrategy | None = None,
    layout_world: int | None = None,
) -> Path:
    """Write this model as a Megatron-LM ``torch_dist`` checkpoint at ``path`` (every rank calls it).

    Each rank writes its shards of ``{"model": chunk.sharded_state_dict()}`` (``model0``, ``model1``,
    ... for virtual pipeline chunks) into ``iter_0000000/``; rank 0 writes the common state, the
    tracker, ``run_config.json`` (provider settings plus ``run_config`` under ``"run"``),
    ``provenance.json`` and ``tokenizer/``. Everything goes into a temporary sibling that is renamed
    into place at the end, so an interrupted save leaves no complete-looking folder.

    ``strategy``: another writer of the same format (the streaming import's, whose model is on the
    meta device); ``layout_world``: the world size the checkpoint describes when the ranks saving it
    are workers of one layout-free model rather than that layout's ranks.
    """
    path = Path(path)
    chunks = unwrap_chunks(model_chunks)
    tokenizer_files = [Path(f) for f in tokenizer_files]
    documents: dict[str, str] = {}

    def prepare(tmp: Path) -> None:  # rank 0, before any shard is written
        names = [f.name for f in tokenizer_files]
        for file in tokenizer_files:
            if not file.is_file():
                raise CheckpointError(f"{file}: tokenizer file does not exist")
        if len(set(names)) != len(names):
            raise CheckpointError(f"{path / TOKENIZER_DIR}: two tokenizer files have the same name: {names}")
        document = run_config_document(provider, run_config, layout_world or world_size())
        documents[RUN_CONFIG] = _json_text(document, path / RUN_CONFIG)
        documents[PROVENANCE] = _json_text(provenance, path / PROVENANCE)
        (tmp / ITER_DIR).mkdir()

    with _shared_atomic_dir(path, overwrite, prepare) as tmp, writing_to(path):
        state: dict[str, Any] = {
            key: chunk.sharded_state_dict(metadata=dict(CONTENT_METADATA))
            for key, chunk in zip(model_keys(len(chunks)), chunks)
        }
        state.update(
            checkpoint_version=3.0,
            iteration=ITERATION,
            args=megatron_args(provider, layout_world or world_size(), tokenizer=bool(tokenizer_files)),
            num_floating_point_operations_so_far=0,
        )
        dist_checkpointing.save(
            state,
            str(tmp / ITER_DIR),
            sharded_strategy=strategy or _SyncSaveStrategy(),
            content_metadata=dict(CONTENT_METADATA),
        )
        if rank() == 0:
            if tokenizer_files:
                (tmp / TOKENIZER_DIR).mkdir()
            for file in tokenizer_files:
                shutil.copy2(file, tmp / TOKENIZER_DIR / file.name)
            for name, text in documents.items():
                (tmp / name).write_text(text)
            (tmp / TRACKER).write_text(str(ITERATION))
    return path


__all__ = [
    "CheckpointInfo",
    "load_megatron_checkpoint",
    "load_weights_into",
    "megatron_args",
    "provider_kwargs_from_run_config",
    "provider_settings",
    "save_megatron_checkpoint",
]
