"""Measuring helpers: wall time and peak RSS of a process tree, medians, the machine description."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

GIB = 2**30


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in keys:
                    out[key] = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return out


def tree_rss(proc: psutil.Process) -> tuple[int, int, int]:
    """(sum of RSS over ``proc`` and its descendants, largest single RSS, sum of anonymous RSS).

    RSS counts the pages of memory-mapped files (safetensors are read through mmap) as well as the
    process's own memory; the anonymous part (``RssAnon``, Linux) is what the process allocated.
    """
    total = largest = anon = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    for p in procs:
        status = _status_kib(p.pid, ("VmRSS", "RssAnon"))
        if "VmRSS" in status:
            rss = status["VmRSS"]
        else:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
        total += rss
        largest = max(largest, rss)
        anon += status.get("RssAnon", 0)
    return total, largest, anon


def measure(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    interval: float = 0.02,
    timeout: float = 1800,
) -> dict[str, Any]:
    """Run ``cmd``; wall time, peak RSS summed over the process tree (polled), output tail, exit code."""
    environ = {**os.environ, **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=environ, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak_tree = peak_single = peak_anon = 0
    out_chunks: list[str] = []
    import threading

    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        total, largest, anon = tree_rss(ps)
        peak_tree, peak_single, peak_anon = max(peak_tree, total), max(peak_single, largest), max(peak_anon, anon)
        if time.perf_counter() - start > timeout:
            proc.kill()
            break
        time.sleep(interval)
    wall = time.perf_counter() - start
    proc.wait()
    reader.join(timeout=10)
    output = "".join(out_chunks)
    return {
        "cmd": " ".join(str(c) for c in cmd),
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_rss_tree": peak_tree,
        "peak_rss_single": peak_single,
        "peak_rss_anon": peak_anon,
        "output_tail": output[-3000:],
    }


def check(result: dict[str, Any]) -> dict[str, Any]:
    if result["rc"] != 0:
        raise RuntimeError(f"benchmark command failed (exit {result['rc']}): {result['cmd']}\n{result['output_tail']}")
    return result


def settle() -> None:
    """Flush dirty pages before a timed run, so one run's writeback does not land in the next."""
    os.sync()
    time.sleep(0.5)


def remove(path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the raw values (rounded)."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": [round(v, 4) for v in values],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _disk(path: Path) -> dict[str, Any]:
    path = path.resolve()
    usage = shutil.disk_usage(path)
    device, fstype, options = "?", "?", ""
    best = ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            dev, mount, fs, opts, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, device, fstype, options = mount, dev, fs, opts
    except OSError:
        pass
    rotational = None
    name = Path(device).name
    rot = Path(f"/sys/block/{name}/queue/rotational")
    if rot.is_file():
        rotational = rot.read_text().strip() == "1"
    return {
        "path": str(path),
        "device": device,
        "fstype": fstype,
        "mount_options": options,
        "size_gb": round(usage.total / 1e9, 1),
        "free_gb": round(usage.free / 1e9, 1),
        "rotational_flag": rotational,
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine(cache: Path, peer_python: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on."""
    versions = {
        d: _version(d)
        for d in ("torch", "megatron-core", "transformers", "safetensors", "bridge-core", "bridge-llama", "bridge-qwen")
    }
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / GIB, 1),
        "disk": _disk(cache),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }
    if peer_python:
        code = "from importlib import metadata as m; print(m.version('mbridge'))"
        out = subprocess.run([peer_python, "-c", code], capture_output=True, text=True)
        info["versions"]["mbridge"] = out.stdout.strip() or None
    return info
