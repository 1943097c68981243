"""The pure half of conversion: resolve parameters to mappings and check coverage and shapes.

Nothing here communicates or reads tensor data, so every check runs identically on every rank
before any collective starts (no rank can fail alone and leave the others waiting), and the plan
can be unit-tested without a process group.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from bridge_core.conversion.params import ParamInfo
from bridge_core.errors import CoverageError
from bridge_core.mappings.base import MappingContext, MegatronParamMapping
from bridge_core.model.mapping_registry import MegatronMappingRegistry

TIED_OUTPUT = "output_layer.weight"
TIED_SOURCE = "embedding.word_embeddings.weight"
QUANTIZED_DTYPES = {torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8, torch.int32}
QUANT_COMPANION = re.compile(r"(_scale_inv|\.weight_scale|\.input_scale|\.scales|\.qweight|\.qzeros|\.g_idx)$")
SHOWN = 8


def _listing(names: Iterable[str]) -> str:
    names = sorted(names)
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


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


def build_tasks(params: list[ParamInfo], registry: MegatronMappingRegistry, *, tied: bool, owner: str) -> list[Task]:
    """Bind every parameter to exactly one mapping; any parameter left over is an error naming it."""
    tasks, unmapped, problems = [], [], []
    for p in params:
        # the output layer of a tied model, or a duplicate of the embedding megatron-core keeps in sync with the
        # first stage's (``shared``: the MTP stage's of a pipeline): loaded from the same HF tensor, never exported
        copy = (tied and p.global_name == TIED_OUTPUT) or (
            p.global_name == TIED_SOURCE and bool(getattr(p.tensor, "shared", False))
        )
        try:
            mapping = registry.megatron_to_hf_lookup(TIED_SOURCE if copy else p.global_name)
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
            f"random initialisation: {_listing(unmapped)}"
        )
    if problems:
        raise CoverageError(f"{owner}: {'; '.join(problems[:SHOWN])}")
    return sorted(tasks, key=lambda t: t.sort_key)


def _meta(shape: tuple[int, ...], dtype: Any) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32, device="meta")


def expected_hf_shapes(task: Task, config: Any, hf_config: Any) -> dict[str, tuple[int, ...]]:
    """The exact shape of each HF tensor (a slice of it for stacked tensors) that ``task`` reads: what
    exporting the parameter writes (empty when the mapping cannot run on meta tensors)."""
    try:
        return {name: shape for name, _, shape, _ in export_parts(task, config, hf_config, None)}
    except Exception:  # a mapping without a meta-friendly export; the import dry run still checks it
        return {}


def check_import_shapes(tasks: list[Task], meta: Mapping[str, Any], config: Any, hf_config: Any) -> None:
    """Dry-run every format transform on meta tensors; mismatched shapes are one error listing them.

    Each HF tensor must have exactly the shape the export writes (same element count is not enough:
    a transposed tensor would be reshaped into scrambled rows).
    """
    problems = []
    for task in tasks:
        m = task.mapping
        inputs = {}
        if any(name not in meta for name in m.hf_names):
            continue  # check_import_coverage names what is missing
        expected = {} if task.tied_copy else expected_hf_shapes(task, config, hf_config)
        for name in m.hf_names:
            info = meta[name]
            shape = tuple(info.shape)
            if m.index is not None:
                if not shape or m.index >= shape[0]:
                    problems.append(f"{name} has shape {shape}, no slice {m.index} for {task.param.global_name}")
                    break
                shape = shape[1:]
            inputs[name] = _meta(shape, info.dtype)
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
                    where = f"{name} ({file}{f', slice {m.index}' if m.index is not None else ''})" if file else name
                    problems.append(
                        f"{task.param.global_name} expects {tuple(want)} from {where}, HF gives {tuple(tensor.shape)} "
                        "(same element count is not enough: the rows would be scrambled)"
                    )
    if problems:
        raise CoverageError(
            f"shape mismatch between checkpoint and model: {'; '.join(problems[:SHOWN])}"
            + (f" (+{len(problems) - SHOWN} more)" if len(problems) > SHOWN else "")
        )


def consumption(tasks: list[Task]) -> list[tuple[str, str, int | None]]:
    """``(global Megatron name, HF key, slice index)`` for every HF read of these tasks (tied copies excluded)."""
    return [(t.param.global_name, key, t.mapping.index) for t in tasks if not t.tied_copy for key in t.hf_keys]


def check_import_coverage(
    consumed: Iterable[tuple[str, str, int | None]],
    meta: Mapping[str, Any],
    *,
    allow_unused: Iterable[str] = (),
    companions_ok: bool = False,
) -> None:
    """Every HF tensor consumed exactly once (over all ranks), every needed tensor present.

    ``consumed`` is the union of every rank's ``consumption`` (duplicates from tensor/data parallel
    peers collapse because they share the global Megatron name).
    """
    by_slot: dict[tuple[str, int | None], set[str]] = defaultdict(set)
    for megatron_name, key, index in set(consumed):
        by_slot[(key, index)].add(megatron_name)
    keys = {key for key, _ in by_slot}
    missing = keys - set(meta)
    if missing:
        raise CoverageError(f"the checkpoint lacks {len(missing)} tensor(s) the model needs: {_listing(missing)}")
    twice = [f"{key} -> {' and '.join(sorted(names))}" for (key, _), names in by_slot.items() if len(names) > 1]
    if twice:
        raise CoverageError(f"HF tensor(s) consumed by several Megatron parameters: {'; '.join(sorted(twice)[:SHOWN])}")
    stacked = Counter(key for key, index in by_slot if index is not None)
    partial = [f"{k} ({stacked[k]} of {meta[k].shape[0]} slices)" for k in stacked if stacked[k] != meta[k].shape[0]]
    if partial:
        raise CoverageError(f"stacked HF tensor(s) only partly consumed: {_listing(partial)}")
    allowed = set(allow_unused)
    unused = {k for k in set(meta) - keys if k not in allowed}
    if companions_ok:
        unused = {k for k in unused if not QUANT_COMPANION.search(k)}
    if unused:
        raise CoverageError(
            f"{len(unused)} HF tensor(s) are not consumed by any mapping and would be dropped: "
            f"{_listing(unused)} (pass allow_unmapped=[...] to skip them deliberately)"
        )


def check_quantization(meta: Mapping[str, Any], hf_config: Any, *, dequantizes: bool, owner: str) -> None:
    """Refuse quantized sources unless the bridge declares that it dequantizes them."""
    if dequantizes:
        return
    raw = sorted(k for k, m in meta.items() if m.dtype in QUANTIZED_DTYPES or isinstance(m.dtype, str))
    companions = sorted(k for k in meta if QUANT_COMPANION.search(k))
    qconfig = getattr(hf_config, "quantization_config", None)
    if raw or companions or qconfig:
        found = (
            f"{raw[0]} is {meta[raw[0]].dtype}"
            if raw
            else f"{companions[0]} is a quantization scale"
            if companions
            else "config.json has quantization_config"
        )
        raise CoverageError(
            f"the checkpoint holds quantized weights ({found}; {len(raw)} quantized tensors, {len(companions)} scale "
            f"tensors) and {owner} does not dequantize: loading raw values would corrupt the model. Dequantize the "
            "checkpoint first, or use a bridge whose maybe_modify_loaded_hf_weight does "
            "(bridge_core.model.quantization.dequantize_fp8_blockwise)"
        )


def export_parts(
    task: Task, config: Any, hf_config: Any, dtype: torch.dtype | None
) -> list[tuple[str, int | None, tuple, torch.dtype]]:
    """``(hf_name, slice index, shape, dtype)`` of what exporting ``task`` produces (meta dry-run)."""
    full = _meta(task.param.full_shape, task.param.dtype)
    out = task.mapping.megatron_to_hf(full, task.context(config, hf_config))
    want = task.mapping.hf_dtype or dtype
    return [(name, task.mapping.index, tuple(t.shape), want or t.dtype) for name, t in out.items()]
