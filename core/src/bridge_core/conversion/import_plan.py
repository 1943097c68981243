"""The import plan: which HF tensors this rank's parameters are built from, and the checks that refuse a
checkpoint before any weight is read (pure).

``ImportPlan.build`` takes this rank's tasks (``tasks.build_tasks``: the bridge's mappings bound to the
model's parameters) and the HF index metadata (names, shapes, dtypes from the safetensors headers): no
tensor data, no process group. ``check_quantization`` and ``check_shapes`` need this rank's plan alone;
``check_coverage`` needs what every rank consumes (each rank's ``consumption``, gathered by the caller
with the one collective), so that each HF tensor is consumed exactly once over the whole model.
``check`` runs the three in that order.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from bridge_core.conversion.tasks import SHOWN, Task, expected_hf_shapes, listing, meta_tensor, natural_key
from bridge_core.errors import CoverageError

QUANTIZED_DTYPES = {torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8, torch.int32}
QUANT_COMPANION = re.compile(r"(_scale_inv|\.weight_scale|\.input_scale|\.scales|\.qweight|\.qzeros|\.g_idx)$")

# (global Megatron name, HF key, slice index): one HF read of one parameter.
Consumed = tuple[str, str, int | None]


@dataclass(frozen=True)
class ParamRead:
    """One Megatron parameter of this rank and the HF tensors it is built from, as plain data."""

    megatron: str  # the global name
    shape: tuple[int, ...]  # the full (unsplit) shape
    mapping: str  # the mapping's class
    hf_names: tuple[str, ...]
    index: int | None  # the slice of a stacked HF tensor (experts), or None
    tied_copy: bool  # filled from the tensor of another parameter (a tied output layer): reads nothing

    @classmethod
    def of(cls, task: Task) -> ParamRead:
        p, m = task.param, task.mapping
        return cls(p.global_name, tuple(p.full_shape), type(m).__name__, tuple(m.hf_names), m.index, task.tied_copy)


@dataclass(frozen=True)
class ImportPlan:
    """This rank's reads (``params``, in task order) against the checkpoint's tensors (``hf``, by name).

    Two plans of the same inputs are equal; ``diff`` says what differs. ``tasks``, ``config`` and
    ``hf_config`` (the live bindings the shape dry-run runs) take no part in the comparison.
    """

    params: tuple[ParamRead, ...]
    hf: tuple[tuple[str, Any], ...]  # (HF name, its TensorMeta: file, shape, dtype), sorted by name
    owner: str = "the bridge"
    dequantizes: bool = False  # the bridge dequantizes quantized sources (and reads their scales itself)
    quantization_config: bool = False  # config.json has a quantization_config
    allow_unused: frozenset[str] = frozenset()  # HF tensors the user lets go unread
    tasks: tuple[Task, ...] = field(default=(), compare=False, repr=False)
    config: Any = field(default=None, compare=False, repr=False)
    hf_config: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        tasks: Iterable[Task],
        hf_meta: Mapping[str, Any],
        config: Any = None,
        hf_config: Any = None,
        *,
        owner: str = "the bridge",
        dequantizes: bool = False,
        allow_unused: Iterable[str] = (),
    ) -> ImportPlan:
        """The plan of ``tasks`` (this rank's) reading the checkpoint described by ``hf_meta``."""
        tasks = tuple(tasks)
        return cls(
            params=tuple(ParamRead.of(t) for t in tasks),
            hf=tuple(sorted(hf_meta.items())),
            owner=owner,
            dequantizes=dequantizes,
            quantization_config=bool(getattr(hf_config, "quantization_config", None)),
            allow_unused=frozenset(allow_unused),
            tasks=tasks,
            config=config,
            hf_config=hf_config,
        )

    @cached_property
    def meta(self) -> dict[str, Any]:
        """HF name -> TensorMeta."""
        return dict(self.hf)

    def consumption(self) -> list[Consumed]:
        """``(global Megatron name, HF key, slice index)`` for every HF read of this rank (tied copies excluded)."""
        return [(r.megatron, key, r.index) for r in self.params if not r.tied_copy for key in r.hf_names]

    def check(self, consumed: Iterable[Consumed]) -> None:
        """Every check, in order: quantization, shapes, then coverage of ``consumed`` (every rank's
        ``consumption`` together)."""
        self.check_quantization()
        self.check_shapes()
        self.check_coverage(consumed)

    def check_quantization(self) -> None:
        """Refuse quantized sources unless the bridge declares that it dequantizes them."""
        if self.dequantizes:
            return
        meta = self.meta
        raw = sorted(k for k, m in meta.items() if m.dtype in QUANTIZED_DTYPES or isinstance(m.dtype, str))
        companions = sorted(k for k in meta if QUANT_COMPANION.search(k))
        if raw or companions or self.quantization_config:
            found = (
                f"{raw[0]} is {meta[raw[0]].dtype}"
                if raw
                else f"{companions[0]} is a quantization scale"
                if companions
                else "config.json has quantization_config"
            )
            raise CoverageError(
                f"the checkpoint holds quantized weights ({found}; {len(raw)} quantized tensors, {len(companions)} "
                f"scale tensors) and {self.owner} does not dequantize: loading raw values would corrupt the model. "
                "Dequantize the checkpoint first, or use a bridge whose maybe_modify_loaded_hf_weight does "
                "(bridge_core.model.quantization.dequantize_fp8_blockwise)"
            )

    def check_shapes(self) -> None:
        """Dry-run every format transform on meta tensors; mismatched shapes are one error listing them.

        Each HF tensor must have exactly the shape the export writes (same element count is not enough:
        a transposed tensor would be reshaped into scrambled rows).
        """
        meta, config, hf_config = self.meta, self.config, self.hf_config
        problems = []
        for task in self.tasks:
            m = task.mapping
            inputs = {}
            if any(name not in meta for name in m.hf_names):
                continue  # check_coverage names what is missing
            expected = {} if task.tied_copy else expected_hf_shapes(task, config, hf_config)
            for name in m.hf_names:
                info = meta[name]
                shape = tuple(info.shape)
                if m.index is not None:
                    if not shape or m.index >= shape[0]:
                        problems.append(f"{name} has shape {shape}, no slice {m.index} for {task.param.global_name}")
                        break
                    shape = shape[1:]
                inputs[name] = meta_tensor(shape, info.dtype)
            else:
                try:
                    full = m.hf_to_megatron(m.hf_weights_arg(inputs), task.context(config, hf_config))
                except Exception as exc:
                    shapes = {n: tuple(t.shape) for n, t in inputs.items()}
                    problems.append(f"{task.param.global_name} cannot be built from {shapes} ({exc})")
                    continue
                if tuple(full.shape) != task.param.full_shape:
                    shapes = {n: tuple(t.shape) for n, t in inputs.items()}
                    problems.append(
                        f"{task.param.global_name} expects {task.param.full_shape}, "
                        f"HF gives {tuple(full.shape)} from {shapes}"
                    )
                    continue
                for name, tensor in inputs.items():
                    want = expected.get(name)
                    if want is not None and tuple(want) != tuple(tensor.shape):
                        file = getattr(meta[name], "file", None)
                        slice_ = f", slice {m.index}" if m.index is not None else ""
                        where = f"{name} ({file}{slice_})" if file else name
                        problems.append(
                            f"{task.param.global_name} expects {tuple(want)} from {where}, HF gives "
                            f"{tuple(tensor.shape)} (same element count is not enough: the rows would be scrambled)"
                        )
        if problems:
            raise CoverageError(
                f"shape mismatch between checkpoint and model: {'; '.join(problems[:SHOWN])}"
                + (f" (+{len(problems) - SHOWN} more)" if len(problems) > SHOWN else "")
            )

    def check_coverage(self, consumed: Iterable[Consumed]) -> None:
        """Every HF tensor consumed exactly once (over all ranks), every needed tensor present.

        ``consumed`` is the union of every rank's ``consumption`` (duplicates from tensor/data parallel
        peers collapse because they share the global Megatron name).
        """
        meta = self.meta
        by_slot: dict[tuple[str, int | None], set[str]] = defaultdict(set)
        for megatron_name, key, index in set(consumed):
            by_slot[(key, index)].add(megatron_name)
        keys = {key for key, _ in by_slot}
        missing = keys - set(meta)
        if missing:
            raise CoverageError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {listing(missing)}")
        twice = [f"{key} -> {' and '.join(sorted(names))}" for (key, _), names in by_slot.items() if len(names) > 1]
        if twice:
            raise CoverageError(
                f"HF tensor(s) consumed by several Megatron parameters: {'; '.join(sorted(twice)[:SHOWN])}"
            )
        stacked = Counter(key for key, index in by_slot if index is not None)
        partial = [
            f"{k} ({stacked[k]} of {meta[k].shape[0]} slices)" for k in stacked if stacked[k] != meta[k].shape[0]
        ]
        if partial:
            raise CoverageError(f"stacked HF tensor(s) only partly consumed: {listing(partial)}")
        unused = {k for k in set(meta) - keys if k not in self.allow_unused}
        if self.dequantizes:  # the bridge reads the scales itself
            unused = {k for k in unused if not QUANT_COMPANION.search(k)}
        if unused:
            raise CoverageError(
                f"{len(unused)} HF tensor(s) are not consumed by any mapping and would be dropped: "
                f"{listing(unused)} (pass allow_unmapped=[...] to skip them deliberately)"
            )

    def diff(self, other: ImportPlan) -> list[str]:
        """What ``other`` plans differently from this plan, one line each (empty when they are equal)."""
        lines = []
        mine, theirs = {r.megatron: r for r in self.params}, {r.megatron: r for r in other.params}
        for name in sorted(mine.keys() | theirs.keys(), key=natural_key):
            if mine.get(name) != theirs.get(name):
                lines.append(f"{name}: {mine.get(name)} -> {theirs.get(name)}")
        for name in sorted(self.meta.keys() | other.meta.keys()):
            if self.meta.get(name) != other.meta.get(name):
                lines.append(f"{name}: {self.meta.get(name)} -> {other.meta.get(name)}")
        for setting in ("owner", "dequantizes", "quantization_config", "allow_unused"):
            if getattr(self, setting) != getattr(other, setting):
                lines.append(f"{setting}: {getattr(self, setting)!r} -> {getattr(other, setting)!r}")
        return lines
