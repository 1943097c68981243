"""Direct reads: a parameter's rows straight from the safetensors file, no temporary, no collective.

Used for a task when its mapping places whole HF rows (``hf_row_layout``) and its split keeps whole
rows (``shard_rows``), the bridge does not override ``maybe_modify_loaded_hf_weight``, the file
holds the parameter's dtype, the parameter is in host or GPU memory, and the source can read rows
(``read_rows_into``). Then every rank of a tensor-parallel group reads only the rows of its own shard:
each byte is still read once per group, and nothing is sent (``row_reader.py`` runs the reads).
Anything else takes the general path (read, transform, split, scatter).
"""

from __future__ import annotations

from typing import Any

from bridge_core.conversion.groups import SplitGroup
from bridge_core.conversion.plan import Task
from bridge_core.conversion.row_reader import Read
from bridge_core.mappings.base import MegatronParamMapping
from bridge_core.model.bridge import MegatronModelBridge


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
        or param.device.type not in ("cpu", "cuda")  # GPU parameters: through pinned buffers (row_reader)
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
