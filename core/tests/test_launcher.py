"""``bridgectl``'s own rank launcher: failure reports, and the process group's end in each rank."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bridge_core.cli import launcher
from bridge_core.runtime.ports import free_port

# Stands in for ``python -m bridge_core.cli.main ...``: each rank does what its RANK says.
FAKE_RANK = """#!/bin/sh
case "$RANK" in
  0) {rank0} ;;
  *) {others} ;;
esac
"""


def spawn_fake(monkeypatch, tmp_path: Path, rank0: str, others: str, world: int = 2) -> int:
    script = tmp_path / "fake-python"
    script.write_text(FAKE_RANK.format(rank0=rank0, others=others))
    script.chmod(0o755)
    monkeypatch.setattr(launcher.sys, "executable", str(script))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the rank logs go
    return launcher.spawn_ranks(["import"], world)


def rank_logs(tmp_path: Path) -> list[str]:
    return [str(p) for p in (tmp_path / "tmp").iterdir()]


def test_a_rank_killed_by_a_signal_is_named_and_the_others_are_stopped(monkeypatch, tmp_path, capfd):
    start = time.monotonic()
    code = spawn_fake(monkeypatch, tmp_path, rank0="kill -ABRT $$", others="exec sleep 60")
    assert code == 1
    assert time.monotonic() - start < 30  # rank 1 was terminated, not waited for
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == ["bridgectl: rank 0 was killed by SIGABRT (its output is above)"]
    assert rank_logs(tmp_path) == []  # nothing points to them


def test_a_failing_rank_reports_its_last_stderr_line_and_exit_code(monkeypatch, tmp_path, capfd):
    code = spawn_fake(monkeypatch, tmp_path, rank0="exec sleep 60", others="echo noise >&2; echo boom >&2; exit 3")
    assert code == 3
    (line,) = capfd.readouterr().err.strip().splitlines()
    (logs,) = rank_logs(tmp_path)
    assert line == f"bridgectl: rank 1 exited with code 3: boom (logs in {logs})"
    assert (Path(logs) / "rank1.err").read_text() == "noise\nboom\n"


def test_a_rank_error_file_is_reported_as_written(monkeypatch, tmp_path, capfd):
    others = f'echo "bridgectl import: error: bad --tp" > "${launcher.ERROR_FILE_ENV}"; exit 2'
    assert spawn_fake(monkeypatch, tmp_path, rank0="exec sleep 60", others=others) == 2
    assert capfd.readouterr().err.strip() == "bridgectl import: error: bad --tp"
    assert rank_logs(tmp_path) == []


def test_every_rank_succeeding_is_success(monkeypatch, tmp_path, capfd):
    assert spawn_fake(monkeypatch, tmp_path, rank0="exit 0", others="exit 0", world=3) == 0
    assert capfd.readouterr().err == "" and rank_logs(tmp_path) == []


END_GROUP = """
import os, sys
import torch.distributed as dist
from bridge_core.cli.main import _end_process_group
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=0, world_size=1)
_end_process_group({code})
print("initialized" if dist.is_initialized() else "destroyed")
"""


@pytest.mark.parametrize(("code", "world_size", "rc", "out"), [(0, "1", 0, "destroyed"), (5, "1", 5, "")])
def test_a_rank_ends_its_process_group(code, world_size, rc, out):
    """Success destroys the group (no gloo threads left at exit); a failed rank process exits at once."""
    script = END_GROUP.format(port=free_port(), code=code)
    if code:
        script += "sys.exit(0)\n"  # not reached: the failed rank has exited with its own code
    env = {"PATH": "/usr/bin:/bin", "WORLD_SIZE": world_size, "RANK": "0"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (rc, out), proc.stderr


def test_a_group_the_caller_started_is_left_alone():
    script = (
        "import torch.distributed as dist\nfrom bridge_core.cli.main import main\n"
        f"dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{free_port()}', rank=0, "
        "world_size=1)\n"
        "assert main(['plugins', '--json']) == 0\nprint(dist.is_initialized())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "BRIDGE_PLUGINS": ""}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout.strip().splitlines()[-1:]) == (0, ["True"]), proc.stderr


def test_more_ranks_than_visible_gpus_are_refused_in_one_line(monkeypatch):
    import torch

    from bridge_core.errors import ConfigError
    from bridge_core.runtime import parallel

    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda *a, **k: pytest.fail("NCCL was started"))
    monkeypatch.setattr(parallel, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(ConfigError, match="2 ranks on this machine need one GPU each but 1 CUDA device is visible"):
        parallel.ensure_process_group()
    # Ranks bound to a GPU each (SLURM sets CUDA_VISIBLE_DEVICES per rank): each one uses its only device.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(parallel.dist, "init_process_group", lambda *a, **k: None)
    parallel.ensure_process_group()
    assert chosen == [0]
