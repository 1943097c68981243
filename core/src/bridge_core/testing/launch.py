"""Launch ``dist_runner`` under torchrun and collect each case's outcome.

Ranks run on the CPU (gloo, CUDA hidden) unless ``cuda=True``: a test written for the CPU layouts
stays a CPU test on a machine with GPUs (two ranks cannot share one GPU under NCCL).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bridge_core.runtime.ports import free_port

CPU_ENV = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def torchrun(
    args: list[str], nproc: int, timeout: float = 900, env: dict | None = None, cuda: bool = False
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node nproc ...`` on this machine (CPU unless ``cuda``).

    A port taken between ``free_port`` and the launcher's bind (parallel test workers) is retried
    with another: the launcher fails before any rank starts then."""
    environ = {**os.environ, **(CPU_ENV if not cuda else {"OMP_NUM_THREADS": "1"}), **(env or {})}
    for _ in range(PORT_ATTEMPTS):
        port = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *port, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    return proc


PORT_ATTEMPTS = 3


def run_cases(
    cases: list[dict],
    workdir: str | Path,
    nproc: int = 2,
    timeout: float = 900,
    env: dict | None = None,
    cuda: bool = False,
) -> dict[str, dict]:
    """Run every case in one launch; returns ``{name: {"logits": path, "hf": path, "error": str|None}}``."""
    workdir = Path(workdir)
    spec = workdir / "cases.json"
    spec.write_text(json.dumps(cases, indent=1))
    proc = torchrun(["-m", "bridge_core.testing.dist_runner", str(spec)], nproc, timeout, env=env, cuda=cuda)
    results = {}
    for case in cases:
        out = Path(case["out"])
        errors = sorted(out.glob("error-rank*.txt")) if out.exists() else []
        error = "\n".join(p.read_text() for p in errors) or None
        if error is None and not (out / "logits.pt").exists():
            error = f"no result (torchrun exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        results[case["name"]] = {"logits": out / "logits.pt", "hf": out / "hf", "error": error}
    return results


def run_bridgectl(
    *args: str, plugins: str, cpu: bool = True, cwd: str | Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``bridgectl args...`` as a user runs it (this Python's console script, a fresh process) with only
    ``plugins`` enabled (``BRIDGE_PLUGINS``; the caller's other ``BRIDGE_*`` variables dropped), on the
    CPU unless ``cpu=False`` (with CUDA visible, ``--tp 2`` asks for two GPUs)."""
    exe = Path(sys.executable).parent / "bridgectl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(CPU_ENV if cpu else {"OMP_NUM_THREADS": "1"}, BRIDGE_PLUGINS=plugins)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
