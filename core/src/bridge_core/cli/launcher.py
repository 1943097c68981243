"""Run a ``bridgectl`` command on N local ranks (one process each), or in this process when N is 1.

Under an outer ``torchrun`` (``WORLD_SIZE`` set) the command runs in place. Otherwise the parent
spawns the ranks itself with torchrun's environment variables, streams rank 0's output, and on the
first failure stops the others and reports that rank's one-line error (no torchrun failure dumps).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ERROR_FILE_ENV = "BRIDGECTL_ERROR_FILE"


def under_launcher() -> bool:
    """True inside torchrun or one of our own rank processes."""
    return "WORLD_SIZE" in os.environ


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(argv: list[str], world: int) -> int:
    """Run ``bridgectl argv`` on ``world`` ranks; returns the exit code (0 only if every rank succeeded)."""
    port = str(_free_port())
    logs = Path(tempfile.mkdtemp(prefix="bridgectl-ranks-"))
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            ERROR_FILE_ENV: str(logs / f"rank{rank}.error"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world))),
        }
        # Rank 0 talks to the terminal (progress, results, its own error line); the others to logs.
        err = None if rank == 0 else open(logs / f"rank{rank}.err", "w")
        out = None if rank == 0 else open(logs / f"rank{rank}.out", "w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, "-m", "bridge_core.cli.main", *argv], env=env, stdout=out, stderr=err
                ),
                err,
            )
        )
    failed = None
    while failed is None and any(p.poll() is None for p, _ in procs):
        failed = next((r for r, (p, _) in enumerate(procs) if p.poll() not in (None, 0)), None)
        time.sleep(0.05)
    if failed is None:
        failed = next((r for r, (p, _) in enumerate(procs) if p.returncode != 0), None)
    for p, _ in procs:
        if p.poll() is None:
            p.terminate()
    for p, err in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
        if err is not None:
            err.close()
    if failed is None:
        shutil.rmtree(logs, ignore_errors=True)
        return 0
    code = procs[failed][0].returncode
    line = None if (logs / "rank0.error").exists() else _error_line(logs, failed, code)
    if line is not None:  # rank 0 printed no error line: report the failing rank's
        print(line, file=sys.stderr)
    if line is None or str(logs) not in line:  # keep the logs only where the message points to them
        shutil.rmtree(logs, ignore_errors=True)
    return code if code > 0 else 1


def _error_line(logs: Path, rank: int, code: int) -> str:
    error = logs / f"rank{rank}.error"
    if error.exists():
        return error.read_text().strip()
    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
    stderr = logs / f"rank{rank}.err"  # rank 0's stderr went to the terminal, above this line
    tail = stderr.read_text().strip().splitlines()[-1:] if stderr.exists() else []
    where = f": {tail[0]} (logs in {logs})" if tail else " (its output is above)" if rank == 0 else ""
    return f"bridgectl: rank {rank} {how}{where}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
