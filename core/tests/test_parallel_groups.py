"""In a one-process world ``destroy_model_parallel`` frees the process groups ``ensure_model_parallel`` created:
repeated set-ups (every in-process conversion, every test) keep the thread and group counts flat (before:
+17 groups, +51 threads each; a core test run reached 5,500 threads and slowed its torchrun launches 10x)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("megatron.core")

from bridge_core.runtime.cpu_support import cuda_on_cpu
from bridge_core.runtime.parallel import (
    ParallelSizes,
    _process_groups,
    destroy_model_parallel,
    ensure_model_parallel,
    ensure_process_group,
)


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_model_parallel_set_up_and_tear_down_leaks_no_groups_or_threads():
    ensure_process_group()
    with cuda_on_cpu():
        ensure_model_parallel(ParallelSizes())
        destroy_model_parallel()
        threads, groups = _threads(), len(_process_groups())
        for _ in range(4):
            ensure_model_parallel(ParallelSizes())
            assert len(_process_groups()) > groups  # megatron-core's groups exist while it runs
            destroy_model_parallel()
    assert len(_process_groups()) == groups
    assert _threads() <= threads + 2
