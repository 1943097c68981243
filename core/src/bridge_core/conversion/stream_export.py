"""Megatron-LM ``torch_dist`` -> HF safetensors without building the model (memory independent of its size).

The model is built on the ``meta`` device at TP=PP=1 from the checkpoint's run config; the export
walks its parameters in export order and loads them from the checkpoint a window at a time (through
megatron-core's own ``dist_checkpointing.load``, with the safe readers), each window freed once its
HF tensors are written. The HF shards are laid out up front and written tensor by tensor.

The windows' memory is reused (``BufferPool``: a freed window's buffers take the next one's reads,
with no fresh pages to fault in), each box is read straight from its record into the window
(``PieceReader``: in file order, the window's byte ranges announced to the kernel first), and each
finished shard's ``fsync`` runs on a background thread while the next shard is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

from bridge_core.checkpoints.checkpoint_format import CONTENT_METADATA, load_megatron_checkpoint
from bridge_core.checkpoints.checkpoint_load import _refuse_adapters_only, read_common_state
from bridge_core.checkpoints.hf_writer import ShardedSafetensorsWriter
from bridge_core.checkpoints.input_files import folder_files
from bridge_core.checkpoints.output_dir import atomic_output_dir, check_output_dir
from bridge_core.checkpoints.piece_reader import PieceReader
from bridge_core.conversion.auto_bridge import AutoBridge
from bridge_core.conversion.export import export_tasks, gather_plan
from bridge_core.conversion.jobs import checkpoint_bridge, hf_tensors, say
from bridge_core.conversion.layout_plan import meta_session
from bridge_core.conversion.stream_buffers import BufferPool
from bridge_core.conversion.tasks import Task
from bridge_core.model.config_translation import parse_dtype, write_both_rope_spellings
from bridge_core.progress import Progress, stage
from bridge_core.runtime.memory import release_large_frees
from bridge_core.runtime.parallelism import Parallelism
from bridge_core.timing import timeline

WINDOW_BYTES = 512 << 20  # parameters loaded per read of the checkpoint (one larger parameter alone)


class CheckpointWindow:
    """Parameters loaded from the checkpoint in runs of consecutive export units of at most ``window``
    bytes, the next run read by a background thread while this one is converted and written (two runs
    in memory at most; the previous one is given back to the pool when the next is taken, every tensor
    made from it having been written by then)."""

    def __init__(self, sharded: dict, weights_dir: Path, order: list[Task], window: int = WINDOW_BYTES):
        self.sharded, self.reader = sharded, PieceReader(weights_dir)
        self.pool = BufferPool(cap=window)
        self.run_of: dict[str, int] = {}
        self.runs: list[list[Task]] = []
        size = 0
        for task in order:
            nbytes = task.param.tensor.numel() * task.param.tensor.element_size()
            if not self.runs or size + nbytes > window:
                self.runs.append([])
                size = 0
            self.runs[-1].append(task)
            self.run_of[task.param.global_name] = len(self.runs) - 1
            size += nbytes
        self.current = -1
        self.loaded: dict[str, torch.Tensor] = {}
        self.reads = 0
        self.readers = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-window")
        self.ahead: tuple[int, Future] | None = None

    def materialize(self, task: Task) -> Task:
        run = self.run_of[task.param.global_name]
        if run != self.current:
            for tensor in self.loaded.values():  # the previous run first
                self.pool.give(tensor)
            self.loaded = {}
            ahead, self.ahead = self.ahead, None
            self.loaded = ahead[1].result() if ahead and ahead[0] == run else self._load(self.runs[run])
            self.current = run
            if run + 1 < len(self.runs):
                self.ahead = (run + 1, self.readers.submit(self._load, self.runs[run + 1]))
        param = dataclasses.replace(task.param, tensor=self.loaded[task.param.global_name])
        return dataclasses.replace(task, param=param)

    def close(self) -> None:
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.loaded, self.ahead = {}, None
        self.pool.clear()

    def _load(self, tasks: list[Task]) -> dict[str, torch.Tensor]:
        out, requests = {}, []
        for task in tasks:
            name, meta = task.param.global_name, task.param.tensor
            out[name] = self.pool.take(meta.shape, meta.dtype)
            stored = dataclasses.replace(self.sharded[name], data=out[name])
            built = stored.build() if isinstance(stored, ShardedTensorFactory) else stored
            for sh in nested_values({"_": built}):  # views of the buffer: read in place
                box = (1,) * sh.prepend_axis_num + tuple(sh.local_shape)
                requests.append((sh.key, tuple(sh.global_offset), sh.data.view(box)))
        self.reader.read(requests)
        self.reads += 1
        return out


class _ShardWriter(ShardedSafetensorsWriter):
    """The safetensors writer whose finished shards are fsynced and closed on a background thread while
    the next shard is written (``finish`` waits for them, and closes the rest itself)."""

    def __init__(self, folder: Path, max_shard_size: str):
        super().__init__(folder, max_shard_size)
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-fsync")
        self._closing: list[Future] = []
        self._inline = False

    def _close_shard(self, shard: Any) -> None:
        if self._inline:
            super()._close_shard(shard)
            return
        fd, shard.fd = shard.fd, None
        self._closing.append(self._closer.submit(_fsync_close, fd))

    def _wait(self) -> None:
        closing, self._closing = self._closing, []
        errors = [f.exception() for f in closing]
        self._closer.shutdown(wait=True)
        first = next((e for e in errors if e is not None), None)
        if first is not None:  # as if the fsync had failed here (``writing_to`` names the output)
            raise first

    def finish(self) -> dict[str, str]:
        self._wait()
        self._inline = True
        return super().finish()

    def close(self) -> None:
        try:
            self._wait()
        except Exception:  # closing after a failure (or failing now): the partial files are removed below
            if self._finished:
                raise
        finally:
            super().close()


def _fsync_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_order(tasks: list[Task], units: Iterable[Any]) -> list[Task]:
    by_name = {t.param.global_name: t for t in tasks if not t.tied_copy}
    return [by_name[u.global_name] for u in units if u.global_name in by_name]


def stream_export(
    megatron_path: str | Path,
    hf_path: str | Path,
    hf_model: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    accept_config: Iterable[str] = (),
    trust_remote_code: bool = False,
    window: int = WINDOW_BYTES,
) -> Path:
    """Megatron checkpoint -> complete HF folder (weights, regenerated config, tokenizer), no model built."""
    check_output_dir(hf_path, overwrite, "--hf-path")
    release_large_frees()
    timeline().mark("loading libraries")
    stage("export", f"planning from {megatron_path}")
    info = load_megatron_checkpoint(megatron_path)
    _refuse_adapters_only(info.path)
    bridge, kwargs = checkpoint_bridge(AutoBridge, info, hf_model, trust_remote_code, accept_config)
    provider = Parallelism().apply(bridge.bridge.PROVIDER_CLASS(**kwargs))
    metadata = read_common_state(info.weights_dir).get("content_metadata") or dict(CONTENT_METADATA)
    side = folder_files(info.tokenizer_dir, info.path, "tokenizer file") if info.tokenizer_dir else []
    side = side if hf_model is None else bridge.hf.side_files()
    progress = Progress("export", enabled=True, unit="HF tensors", stage="converting")
    with meta_session(provider) as (model, _):
        tasks, layout, config = bridge._tasks([model])
        want = parse_dtype(dtype) if dtype is not None else config.params_dtype
        export = gather_plan(tasks, layout, config, bridge.bridge.hf_config, want)[0]
        sharded = model.sharded_state_dict(metadata=dict(metadata))
        window_ = CheckpointWindow(sharded, info.weights_dir, _run_order(tasks, export.units), window)
        timeline().mark("planning")
        with (
            contextlib.closing(window_),
            atomic_output_dir(Path(hf_path), overwrite) as tmp,
            _ShardWriter(tmp, max_shard_size) as writer,
        ):
            for name, tensor in export_tasks(
                tasks,
                bridge.bridge,
                config,
                layout,
                to_rank=0,
                dtype=want,
                device=torch.device("cpu"),
                progress=progress,
                on_plan=writer.plan,
                plan=export,
                materialize=window_.materialize,
            ):
                writer.add(name, tensor)
            writer.finish()
            bridge.hf_config_for_export(config, want).save_pretrained(tmp)
            write_both_rope_spellings(tmp / "config.json")
            for file in side:
                shutil.copy2(file, tmp / file.name)
    progress.finish()
    timeline().mark("converting")
    params = [t.param.tensor for t in tasks if not t.tied_copy]
    nbytes = sum(p.numel() * p.element_size() for p in params)
    written = hf_tensors(progress.tensors, progress.bytes)
    say(
        f"export: wrote {written} from {len(params)} Megatron parameters ({nbytes / 1e9:.2f} GB) to {hf_path}, "
        f"streamed in {window_.reads} reads: no model built"
    )
    say(f"export: {timeline().summary()}")
    return Path(hf_path)
