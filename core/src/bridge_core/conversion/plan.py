"""The pure half of conversion, by the names it had in 1.0: tasks and the import checks.

The code lives in ``tasks`` (parameters bound to mappings, the meta dry-run of an export) and
``import_plan`` (``ImportPlan``: the import's shape, coverage and quantization checks as methods);
``export_plan`` plans an export. Nothing here communicates or reads tensor data, so every check runs
identically on every rank before any weight is read, and the plan can be unit-tested without a process
group. The four check functions below are the 1.0 calls, each one an ``ImportPlan`` method.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bridge_core.conversion.import_plan import QUANT_COMPANION, QUANTIZED_DTYPES, Consumed, ImportPlan
from bridge_core.conversion.tasks import (
    SHOWN,
    TIED_OUTPUT,
    TIED_SOURCE,
    Task,
    build_tasks,
    expected_hf_shapes,
    export_parts,
    natural_key,
)

__all__ = [
    "QUANTIZED_DTYPES",
    "QUANT_COMPANION",
    "SHOWN",
    "TIED_OUTPUT",
    "TIED_SOURCE",
    "Task",
    "build_tasks",
    "check_import_coverage",
    "check_import_shapes",
    "check_quantization",
    "consumption",
    "expected_hf_shapes",
    "export_parts",
    "natural_key",
]


def check_import_shapes(tasks: list[Task], meta: Mapping[str, Any], config: Any, hf_config: Any) -> None:
    """``ImportPlan.check_shapes`` of ``tasks`` against ``meta``."""
    ImportPlan.build(tasks, meta, config, hf_config).check_shapes()


def consumption(tasks: list[Task]) -> list[Consumed]:
    """``ImportPlan.consumption`` of ``tasks``: ``(global Megatron name, HF key, slice index)`` per HF read."""
    return ImportPlan.build(tasks, {}).consumption()


def check_import_coverage(
    consumed: Iterable[Consumed],
    meta: Mapping[str, Any],
    *,
    allow_unused: Iterable[str] = (),
    companions_ok: bool = False,
) -> None:
    """``ImportPlan.check_coverage`` of every rank's ``consumed`` against ``meta`` (``companions_ok``:
    quantization scales may go unread, as by a bridge that dequantizes)."""
    ImportPlan.build((), meta, allow_unused=allow_unused, dequantizes=companions_ok).check_coverage(consumed)


def check_quantization(meta: Mapping[str, Any], hf_config: Any, *, dequantizes: bool, owner: str) -> None:
    """``ImportPlan.check_quantization``: refuse quantized sources unless the bridge dequantizes them."""
    ImportPlan.build((), meta, None, hf_config, owner=owner, dequantizes=dequantizes).check_quantization()
