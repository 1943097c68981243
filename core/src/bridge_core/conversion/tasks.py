"""Parameters bound to mappings: one ``Task`` per Megatron parameter of this rank, and the meta dry-run of
what exporting it writes.

The shared ground of both plans (``import_plan``, ``export_plan``). Nothing here communicates or reads
tensor data.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from bridge_core.conversion.params import ParamInfo
from bridge_core.errors import CoverageError
from bridge_core.mappings.base import MappingContext, MegatronParamMapping
from bridge_core.model.mapping_registry import MegatronMappingRegistry

TIED_OUTPUT = "output_layer.weight"
TIED_SOURCE = "embedding.word_embeddings.weight"
SHOWN = 8  # names an error lists before "(+N more)"


def listing(names: Iterable[str]) -> str:
    """The first ``SHOWN`` of ``names``, sorted, and how many more."""
    names = sorted(names)
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


@lru_cache(maxsize=1 << 17)  # a pure function of the name; every export sorts the same names again
def natural_key(name: str) -> tuple:
    """Sort ``layers.10`` after ``layers.9``; embeddings first, output layer last."""
    section = (
        0
        if name.startswith("embedding.")
        else 3
        if name.startswith("output_layer.")
        else 1
        if name.startswith("decoder.layers.")
        else 2
    )
    return (section, tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)))


@dataclass
class Task:
    """One Megatron parameter of this rank and the mapping that converts it."""

    param: ParamInfo
    mapping: MegatronParamMapping
    tied_copy: bool = False

    @property
    def hf_keys(self) -> tuple[str, ...]:
        return self.mapping.hf_names

    @property
    def sort_key(self) -> tuple:
        return natural_key(self.param.global_name)

    def context(self, config: Any, hf_config: Any) -> MappingContext:
        return MappingContext(config, hf_config, self.param.full_shape, self.mapping.index)


# Which mapping of a registry matches a name depends only on the mappings' name patterns, in order: per
# set of patterns, name -> index of the one mapping that matches (None: none does). A registry is built
# anew for every export, so the memo is keyed by the patterns, not by the registry object.
_MATCHES: OrderedDict[tuple[str, ...], dict[str, int | None]] = OrderedDict()
_MATCH_SETS = 8  # pattern sets remembered (one per bridge and layout in use)


def _lookup(registry: MegatronMappingRegistry, memo: dict[str, int | None] | None, name: str):
    """``registry.megatron_to_hf_lookup(name)``, trying only the mapping that matched ``name`` before."""
    if memo is None:
        return registry.megatron_to_hf_lookup(name)
    if name not in memo:
        hits = [i for i, m in enumerate(registry.mappings) if m.match(name) is not None]
        if len(hits) > 1:
            return registry.megatron_to_hf_lookup(name)  # raises, naming them: never memoised
        memo[name] = hits[0] if hits else None
    index = memo[name]
    return None if index is None else registry.mappings[index].match(name)


def _memo_for(registry: MegatronMappingRegistry) -> dict[str, int | None] | None:
    """The memo of the registry's patterns (None if a mapping has no compiled pattern to key on)."""
    patterns = tuple(getattr(getattr(m, "_regex", None), "pattern", None) for m in registry.mappings)
    if None in patterns:
        return None
    memo = _MATCHES.pop(patterns, None)  # type: ignore[arg-type]
    _MATCHES[patterns] = memo = {} if memo is None else memo  # type: ignore[index]
    while len(_MATCHES) > _MATCH_SETS:
        _MATCHES.popitem(last=False)
    return memo


def build_tasks(params: list[ParamInfo], registry: MegatronMappingRegistry, *, tied: bool, owner: str) -> list[Task]:
    """Bind every parameter to exactly one mapping; any parameter left over is an error naming it."""
    tasks, unmapped, problems = [], [], []
    memo = _memo_for(registry)
    for p in params:
        # the output layer of a tied model, or a duplicate of the embedding megatron-core keeps in sync with the
        # first stage's (``shared``: the MTP stage's of a pipeline): loaded from the same HF tensor, never exported
        copy = (tied and p.global_name == TIED_OUTPUT) or (
            p.global_name == TIED_SOURCE and bool(getattr(p.tensor, "shared", False))
        )
        try:
            mapping = _lookup(registry, memo, TIED_SOURCE if copy else p.global_name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if mapping is None:
            unmapped.append(p.global_name)
            continue
        if getattr(mapping, "infer_tp_dim", False):
            mapping.tp_dim = p.tp_dim
        elif p.tp_size > 1 and mapping.tp_dim != p.tp_dim:
            problems.append(
                f"{p.global_name}: {type(mapping).__name__} splits dim {mapping.tp_dim}, "
                f"the parameter is split on dim {p.tp_dim}"
            )
        tasks.append(Task(p, mapping, copy))
    if unmapped:
        raise CoverageError(
            f"{len(unmapped)} Megatron parameter(s) have no mapping in {owner} and would keep their "
            f"random initialisation: {listing(unmapped)}"
        )
    if problems:
        raise CoverageError(f"{owner}: {'; '.join(problems[:SHOWN])}")
    return sorted(tasks, key=lambda t: t.sort_key)


def meta_tensor(shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
    """A tensor of ``shape`` with no storage (a dtype torch lacks, e.g. a packed one, becomes fp32)."""
    return torch.empty(shape, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32, device="meta")


def export_parts(
    task: Task, config: Any, hf_config: Any, dtype: torch.dtype | None
) -> list[tuple[str, int | None, tuple, torch.dtype]]:
    """``(hf_name, slice index, shape, dtype)`` of what exporting ``task`` produces (meta dry-run)."""
    full = meta_tensor(task.param.full_shape, task.param.dtype)
    out = task.mapping.megatron_to_hf(full, task.context(config, hf_config))
    want = task.mapping.hf_dtype or dtype
    return [(name, task.mapping.index, tuple(t.shape), want or t.dtype) for name, t in out.items()]


def expected_hf_shapes(task: Task, config: Any, hf_config: Any) -> dict[str, tuple[int, ...]]:
    """The exact shape of each HF tensor (a slice of it for stacked tensors) that ``task`` reads: what
    exporting the parameter writes (empty when the mapping cannot run on meta tensors)."""
    try:
        return {name: shape for name, _, shape, _ in export_parts(task, config, hf_config, None)}
    except Exception:  # a mapping without a meta-friendly export; the import dry run still checks it
        return {}
