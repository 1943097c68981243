"""The command line's jobs as functions: import, export, load a model for generation or checks.

Each is the job of ``conversion/jobs.py`` (same arguments) run with ``AutoBridge`` as the bridge class.
Every rank calls these (one process per rank); output and progress come from rank 0 only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bridge_core.conversion import jobs
from bridge_core.conversion.auto_bridge import AutoBridge
from bridge_core.conversion.jobs import (
    LoadedCheckpoint,
    check_reference,
    hf_tensors,
    megatron_parameters,
    provenance,
    say,
)
from bridge_core.conversion.jobs import hf_config_folder as _hf_config_folder
from bridge_core.progress import Progress

if TYPE_CHECKING:
    from bridge_core.runtime.parallelism import Parallelism

__all__ = [
    "LoadedCheckpoint",
    "_hf_config_folder",
    "build_from_hf",
    "check_reference",
    "export_checkpoint",
    "hf_tensors",
    "import_checkpoint",
    "load_checkpoint",
    "megatron_parameters",
    "provenance",
    "say",
]


def build_from_hf(
    hf_model: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
    accept_config: Iterable[str] = (),
) -> tuple[AutoBridge, Any, list]:
    """Bridge, provider and this rank's model chunks loaded from an HF folder (``jobs.build_from_hf``)."""
    return jobs.build_from_hf(AutoBridge, hf_model, parallel, dtype, trust_remote_code, progress, accept_config)


def import_checkpoint(
    hf_model: str | Path,
    megatron_path: str | Path,
    parallel: Parallelism,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    source: str | None = None,
    accept_config: Iterable[str] = (),
) -> Path:
    """HF folder -> Megatron-LM ``torch_dist`` checkpoint (``jobs.import_checkpoint``)."""
    return jobs.import_checkpoint(
        AutoBridge, hf_model, megatron_path, parallel, dtype, overwrite, trust_remote_code, source, accept_config
    )


def load_checkpoint(
    megatron_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    accept_config: Iterable[str] = (),
) -> LoadedCheckpoint:
    """A Megatron checkpoint loaded into this rank's model chunks at ``parallel`` (``jobs.load_checkpoint``)."""
    return jobs.load_checkpoint(AutoBridge, megatron_path, parallel, hf_model, dtype, trust_remote_code, accept_config)


def export_checkpoint(
    megatron_path: str | Path,
    hf_path: str | Path,
    parallel: Parallelism,
    hf_model: str | Path | None = None,
    dtype: str | None = None,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    accept_config: Iterable[str] = (),
    trust_remote_code: bool = False,
) -> Path | None:
    """Megatron checkpoint -> complete HF folder (``jobs.export_checkpoint``)."""
    return jobs.export_checkpoint(
        AutoBridge,
        megatron_path,
        hf_path,
        parallel,
        hf_model,
        dtype,
        max_shard_size,
        overwrite,
        accept_config,
        trust_remote_code,
    )


def __getattr__(name: str) -> Any:
    # ``Parallelism`` was importable from here (pre-1.0 it lived in workflows); it goes in 2.0.
    if name == "Parallelism":
        warnings.warn(
            "bridge_core.conversion.workflows.Parallelism moved to bridge_core.runtime.parallelism.Parallelism",
            DeprecationWarning,
            stacklevel=2,
        )
        from bridge_core.runtime.parallelism import Parallelism

        return Parallelism
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
