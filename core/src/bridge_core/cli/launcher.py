"""Run a ``bridgectl`` command on N local ranks (one process each), or in this process when N is 1.

Under an outer ``torchrun`` (``WORLD_SIZE`` set) the command runs in place. Otherwise the parent
spawns the ranks itself with torchrun's environment variables, streams rank 0's output, and on the
first failure stops the others and reports that rank's one-line error (no torchrun failure dumps).
Ranks never outlive the launcher (parent-death signal), and an interrupted launcher stops them first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bridge_core.runtime.ports import free_port

ERROR_FILE_ENV = "BRIDGECTL_ERROR_FILE"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 10.0  # an interrupted rank's time to clean up before it is killed


def is_launched_rank() -> bool:
    """True in a rank process this launcher started (it reports interrupts and errors for it)."""
    return ERROR_FILE_ENV in os.environ


def under_launcher() -> bool:
    """True inside torchrun or one of our own rank processes."""
    return "WORLD_SIZE" in os.environ


def spawn_ranks(argv: list[str], world: int) -> int:
    """Run ``bridgectl argv`` on ``world`` ranks; returns the exit code (0 only if every rank succeeded).

    The ranks die with the launcher: each asks the kernel for SIGKILL when its parent dies (so a
    launcher killed even by SIGKILL leaves no rank behind to finish the job), and they form their own
    process group, which an interrupt (Ctrl-C, SIGTERM) of the launcher stops before it returns.
    """
    port = str(free_port())
    logs = Path(tempfile.mkdtemp(prefix="bridgectl-ranks-"))
    procs: list[tuple[subprocess.Popen, Any]] = []
    try:
        with stop_signals_interrupt(), _job_control_reaches(procs):
            for rank in range(world):
                procs.append(_start_rank(argv, rank, world, port, logs, procs[0][0].pid if procs else 0))
            failed = _wait_for_first_failure(procs)
    except BaseException:
        _stop(procs, signal.SIGINT, grace=STOP_GRACE_S)
        shutil.rmtree(logs, ignore_errors=True)
        raise
    _stop(procs, signal.SIGTERM, grace=30)
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


def _start_rank(argv: list[str], rank: int, world: int, port: str, logs: Path, group: int):
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge_core.cli.main", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        preexec_fn=_die_with_parent(os.getpid(), group),
    )
    if out is not None:
        out.close()
    return proc, err


def _wait_for_first_failure(procs: list[tuple[subprocess.Popen, Any]]) -> int | None:
    failed = None
    while failed is None and any(p.poll() is None for p, _ in procs):
        failed = next((r for r, (p, _) in enumerate(procs) if p.poll() not in (None, 0)), None)
        time.sleep(0.05)
    if failed is None:
        failed = next((r for r, (p, _) in enumerate(procs) if p.returncode != 0), None)
    return failed


def _stop(procs: list[tuple[subprocess.Popen, Any]], sig: int, grace: float) -> None:
    """Send ``sig`` to the ranks still running, wait ``grace`` seconds, then kill their group."""
    for p, _ in procs:
        if p.poll() is None:
            _signal_rank(p, sig)
    deadline = time.monotonic() + grace
    for p, err in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):  # the group lives while this rank is unreaped
                os.killpg(procs[0][0].pid, signal.SIGKILL)
            p.wait()
        if err is not None:
            err.close()


def _signal_rank(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(proc.pid, sig)


class Terminated(KeyboardInterrupt):
    """The launcher (or a command) was asked to stop by SIGTERM or SIGHUP: handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (main thread only; restored after)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _job_control_reaches(procs: list[tuple[subprocess.Popen, Any]]) -> Iterator[None]:
    """Ctrl-Z (SIGTSTP) of the launcher stops its ranks' group too, and ``fg``/``bg`` resumes it."""
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTSTP) != signal.SIG_DFL:
        yield
        return

    def on_stop(_signum, _frame):
        group = procs[0][0].pid if procs and procs[0][0].poll() is None else None
        if group is not None:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # stop as the shell expects; returns once continued
        signal.signal(signal.SIGTSTP, on_stop)
        if group is not None:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGCONT)

    signal.signal(signal.SIGTSTP, on_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)


def _die_with_parent(parent: int, group: int) -> Callable[[], None]:
    """A ``preexec_fn``: join the ranks' process group and get SIGKILL when ``parent`` dies (Linux)."""
    prctl = _prctl()

    def setup() -> None:
        try:
            os.setpgid(0, group)
        except OSError:  # rank 0 (the group's leader) is already gone
            os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return setup


def _prctl():
    """libc's ``prctl`` (resolved before fork, so the child only calls it), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


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
