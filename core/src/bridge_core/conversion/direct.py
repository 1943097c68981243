"""Direct reads: a parameter's rows straight from the safetensors file, no temporary, no collective.

Used for a task when its mapping places whole HF rows (``hf_row_layout``) and its split keeps whole
rows (``shard_rows``), the bridge does not override ``maybe_modify_loaded_hf_weight``, the file
holds the parameter's dtype, the parameter is in host memory, and the source can read rows
(``read_rows_into``). Then every rank of a tensor-parallel group reads only the rows of its own
shard: each byte is still read once per group, and nothing is sent. Anything else takes the general
path (read, transform, split, scatter).
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from bridge_core.bridge import MegatronModelBridge
from bridge_core.conversion.groups import SplitGroup
from bridge_core.conversion.plan import Task
from bridge_core.errors import ConfigError
from bridge_core.mappings.base import MegatronParamMapping

# (HF name, first HF row, first local row, number of rows)
Read = tuple[str, int, int, int]


def _owner(cls: type, attr: str) -> type:
    return next(c for c in cls.__mro__ if attr in c.__dict__)


def _layout_trusted(cls: type[MegatronParamMapping]) -> bool:
    """The row methods describe this class's transform and split, not a base class's."""
    return issubclass(_owner(cls, "hf_row_layout"), _owner(cls, "hf_to_megatron")) and issubclass(
        _owner(cls, "shard_rows"), _owner(cls, "split")
    )


def _hook_overridden(bridge: Any) -> bool:
    base = MegatronModelBridge.maybe_modify_loaded_hf_weight
    return getattr(type(bridge), "maybe_modify_loaded_hf_weight", base) is not base


def plan_reads(task: Task, bridge: Any, source: Any, config: Any, split: SplitGroup) -> list[Read] | None:
    """The reads that fill this rank's parameter, or None for the general path.

    The answer is the same on every rank of the group (it depends on the mapping, the file's header
    and the local shape, which ranks share), so no rank waits in a collective the others skip.
    """
    m, param = task.mapping, task.param.tensor
    if (
        m.index is not None
        or param.device.type != "cpu"  # GPU parameters: read, then one host-to-device copy (general path)
        or param.dim() == 0
        or not param.is_contiguous()
        or not hasattr(source, "read_rows_into")
        or _hook_overridden(bridge)
        or not _layout_trusted(type(m))
    ):
        return None
    hf_rows = {}
    for name in m.hf_names:
        meta = source.meta.get(name)
        if meta is None or meta.dtype != param.dtype or not meta.shape or tuple(meta.shape[1:]) != param.shape[1:]:
            return None
        hf_rows[name] = meta.shape[0]
    full_rows = task.param.full_shape[0]
    pieces = m.hf_row_layout(hf_rows, task.context(config, bridge.hf_config))
    ranges = m.shard_rows(full_rows, split.size, split.index)
    if pieces is None or ranges is None or sum(n for _, n in ranges) != param.shape[0]:
        return None
    if not _pieces_valid(pieces, hf_rows, full_rows):
        return None
    reads, local = [], 0
    for first, count in ranges:
        for name, hf_row, row, rows in pieces:
            lo, hi = max(first, row), min(first + count, row + rows)
            if lo < hi:
                reads.append((name, hf_row + lo - row, local + lo - first, hi - lo))
        local += count
    return reads


def _disjoint(spans: list[tuple[int, int]]) -> bool:
    spans = sorted(spans)
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def _pieces_valid(pieces: list, hf_rows: dict[str, int], full_rows: int) -> bool:
    """Every HF row placed exactly once, inside the full tensor, no two pieces on the same rows."""
    by_name: dict[str, list[tuple[int, int]]] = {name: [] for name in hf_rows}
    for name, hf_row, row, rows in pieces:
        if name not in by_name or rows <= 0 or min(hf_row, row) < 0 or row + rows > full_rows:
            return False
        if hf_row + rows > hf_rows[name]:
            return False
        by_name[name].append((hf_row, hf_row + rows))
    # disjoint spans inside [0, n) that add up to n rows cover it exactly
    if any(not _disjoint(s) or sum(b - a for a, b in s) != hf_rows[n] for n, s in by_name.items()):
        return False
    return _disjoint([(row, row + rows) for _, _, row, rows in pieces])


def read_rows(source: Any, reads: list[Read], param: torch.Tensor) -> int:
    """Fill ``param`` from ``reads``; rows no read covers become zeros. Returns the bytes read."""
    dest = param.detach()
    done, covered = 0, []
    for name, hf_row, local, rows in reads:
        done += source.read_rows_into(name, hf_row, dest[local : local + rows])
        covered.append((local, local + rows))
    edge = 0
    for lo, hi in sorted(covered) + [(dest.shape[0], dest.shape[0])]:
        if lo > edge:
            dest[edge:lo].zero_()
        edge = max(edge, hi)
    return done


def read_threads() -> int:
    """Reader threads per rank: ``BRIDGE_READ_THREADS``, else this rank's share of the CPUs, at most 4.

    Reading into fresh parameters is bound by page faults, which proceed in parallel on several cores.
    """
    value = os.environ.get("BRIDGE_READ_THREADS", "").strip()
    if value:
        threads = int(value) if value.isdigit() else 0
        if threads < 1:
            raise ConfigError(f"BRIDGE_READ_THREADS={value!r}: expected a positive integer")
        return threads
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(4, cpus // max(1, local)))


class RowReader:
    """Runs ``read_rows`` on a few threads; the caller collects bytes and progress as reads finish."""

    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="bridge-read") if threads > 1 else None
        self._pending: deque[tuple[Future, int]] = deque()

    def submit(self, source: Any, reads: list[Read], param: torch.Tensor) -> None:
        nbytes = param.numel() * param.element_size()
        if self._pool is None:
            done: Future = Future()
            try:
                done.set_result(read_rows(source, reads, param))
            except Exception as exc:  # raised by ``finished``, as from a thread
                done.set_exception(exc)
            self._pending.append((done, nbytes))
        else:
            self._pending.append((self._pool.submit(read_rows, source, reads, param), nbytes))

    def finished(self, wait: bool = False) -> list[tuple[int, int]]:
        """``(bytes read, parameter bytes)`` of the reads done so far, in order (all of them if ``wait``)."""
        out = []
        while self._pending and (wait or self._pending[0][0].done()):
            future, nbytes = self._pending.popleft()
            out.append((future.result(), nbytes))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
