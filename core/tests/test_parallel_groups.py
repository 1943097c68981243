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


_EXIT_PROBE = """
import atexit, torch.distributed as dist
atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))  # runs after later handlers
from bridge_core.runtime.parallel import ensure_process_group
ensure_process_group()
dist.barrier()
"""


def test_a_launched_rank_ends_its_group_before_the_interpreter_does(tmp_path):
    """A torchrun rank that never calls ``destroy_process_group`` (as a user's script may not) must not
    leave gloo's group to interpreter finalisation, where it can abort the process (a flaky SIGABRT
    with "terminate called without an active exception" in CI)."""
    import subprocess
    import sys

    from bridge_core.runtime.ports import free_port

    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", _EXIT_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "initialized at exit: False" in done.stdout


_PORT_PROBE = """
import socket, sys
from bridge_core.runtime import ports
taken = socket.socket()
taken.bind(("127.0.0.1", 0))
taken.listen()
ports.free_port = lambda: taken.getsockname()[1]  # another process took "the free port" first
import torch.distributed as dist
from bridge_core.runtime import parallel
parallel.free_port = ports.free_port
parallel.ensure_process_group()
dist.barrier()
print("world", dist.get_world_size())
"""


def test_a_one_process_group_needs_no_port_another_process_can_take():
    """Commands run side by side each start a one-process group: picking a free port and binding it
    later raced (EADDRINUSE from ``bridgectl export`` beside other exports); the store is in memory."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", _PORT_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "world 1" in done.stdout, done.stderr[-2000:]
