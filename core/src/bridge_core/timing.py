"""Wall time of a command from the moment the user's ``bridgectl`` process started, in named parts.

The parts add up to the total: each ``mark(name)`` closes the part that began at the previous mark
(or at the process start). A command that starts rank processes hands its start time and parts to
them (``handed_over``), so rank 0's summary covers start-up, source decoding and the rank spawn too.
Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

STARTED_ENV = "BRIDGECTL_STARTED"  # epoch seconds at which the user's bridgectl process started
PARTS_ENV = "BRIDGECTL_TIME_PARTS"  # JSON [[name, end epoch seconds], ...] measured before the spawn
_IMPORTED = time.time()


def process_start_time() -> float:
    """Epoch seconds at which this process started (``/proc/self/stat``), else when this module loaded."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return min(time.time() - (uptime - started_after_boot), _IMPORTED)
    except (OSError, ValueError, IndexError):
        return _IMPORTED


class Timeline:
    """Named parts of one command's wall time (see the module docstring)."""

    def __init__(self) -> None:
        own_start = process_start_time()
        inherited = "WORLD_SIZE" in os.environ and STARTED_ENV in os.environ
        try:
            self.start = float(os.environ[STARTED_ENV]) if inherited else own_start
            self.marks: list[tuple[str, float]] = (
                [(str(n), float(t)) for n, t in json.loads(os.environ.get(PARTS_ENV, "[]"))] if inherited else []
            )
        except (TypeError, ValueError):
            self.start, self.marks, inherited = own_start, [], False
        self.is_rank = inherited

    def mark(self, name: str, at: float | None = None) -> None:
        """End the current part, naming it ``name`` (at ``at`` epoch seconds, default now)."""
        self.marks.append((name, time.time() if at is None else at))

    def mark_startup(self) -> None:
        """End the process's start-up (interpreter, imports, argument parsing)."""
        self.mark("rank start-up" if self.is_rank else "start-up")

    @property
    def total(self) -> float:
        return time.time() - self.start

    def parts(self) -> list[tuple[str, float]]:
        """``(name, seconds)`` in order; parts of the same name are added together."""
        out: dict[str, float] = {}
        previous = self.start
        for name, end in self.marks:
            out[name] = out.get(name, 0.0) + max(end - previous, 0.0)
            previous = max(previous, end)
        return list(out.items())

    def summary(self) -> str:
        """``total 133.2 s (start-up 2.1 s, decoding GGUF 98.0 s, ...)``."""
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.parts() if seconds >= 0.05)
        return f"total {self.total:.1f} s" + (f" ({parts})" if parts else "")

    @contextlib.contextmanager
    def handed_over(self) -> Iterator[None]:
        """Rank processes started inside this block continue this timeline."""
        saved = {k: os.environ.get(k) for k in (STARTED_ENV, PARTS_ENV)}
        os.environ[STARTED_ENV] = repr(self.start)
        os.environ[PARTS_ENV] = json.dumps(self.marks)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


_TIMELINE: Timeline | None = None


def timeline() -> Timeline:
    """This process's timeline (created on first use)."""
    global _TIMELINE
    if _TIMELINE is None:
        _TIMELINE = Timeline()
    return _TIMELINE


def begin_command() -> Timeline:
    """The timeline of a command that starts now, its start-up part closed.

    The first command of a process counts from the process start (or, in a rank, from the user's
    process start); a later command in the same process (tests, scripts) counts from now.
    """
    global _TIMELINE
    later = _TIMELINE is not None
    _TIMELINE = Timeline()
    if later and not _TIMELINE.is_rank:
        _TIMELINE.start, _TIMELINE.marks = time.time(), []
    _TIMELINE.mark_startup()
    return _TIMELINE
