"""What long work shows the user (rank 0 only): stage lines and progress bars.

They go to stdout, with the commands' summary lines, so that stderr holds only warnings and the
one-line error of a failure; ``generate``, whose stdout is the generated text, sends them to stderr
(``set_stream``). On a terminal a counted stage draws a bar that redraws in place; otherwise (a log, a pipe) every
stage prints one line when it starts and a status line at most every ``LOG_INTERVAL`` seconds.
``bridgectl --no-progress`` turns both off (``BRIDGECTL_PROGRESS=0``, inherited by rank processes);
summary lines are always printed. Torch-free: the CLI imports this before any heavy library.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from bridge_core.runtime.parallelism import rank

PROGRESS_ENV = "BRIDGECTL_PROGRESS"
TTY_INTERVAL = 0.2  # seconds between redraws of a bar
LOG_INTERVAL = 10.0  # seconds between status lines in a log
BAR_WIDTH = 24
LOADING_LIBRARIES = "loading torch, megatron-core and transformers"  # the stage before the heavy imports
T = TypeVar("T")


_STREAM: TextIO | None = None  # None: sys.stdout when used


def set_stream(stream: TextIO | None) -> None:
    """Where stage lines and bars go in this process (None: stdout)."""
    global _STREAM
    _STREAM = stream


def _default_stream() -> TextIO:
    return _STREAM or sys.stdout


def progress_enabled() -> bool:
    """False after ``--no-progress`` (here or in the process that started this rank)."""
    return os.environ.get(PROGRESS_ENV, "1") != "0"


def set_progress(enabled: bool) -> None:
    """Turn progress output on or off for this process and the rank processes it starts."""
    os.environ[PROGRESS_ENV] = "1" if enabled else "0"


def is_rank0() -> bool:
    """Rank 0 prints (``runtime.parallelism.rank``: torchrun's ``RANK``, else the group's, else 0)."""
    return rank() == 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def stage(action: str, text: str, stream: TextIO | None = None) -> None:
    """One line naming a stage of ``action`` as it starts (``import: building the model``)."""
    if progress_enabled() and is_rank0():
        print(f"{action}: {text}", file=stream or _default_stream(), flush=True)


class Progress:
    """Counts items and bytes of one stage; draws a bar (terminal) or throttled lines (log).

    ``total_tensors``/``total_bytes`` may be 0 when unknown. ``unit`` names what is counted
    ("Megatron parameters", "HF tensors"). Only ``enabled`` instances print, and never after
    ``--no-progress``.
    """

    def __init__(
        self,
        action: str,
        total_tensors: int = 0,
        total_bytes: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
        unit: str = "tensors",
        stage: str = "",
    ):
        self.action, self.unit, self.stage = action, unit, stage
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.stream = stream or _default_stream()
        self.enabled = enabled and progress_enabled()
        self.tty = _isatty(self.stream)
        self.interval = interval if interval is not None else TTY_INTERVAL if self.tty else LOG_INTERVAL
        self.start = time.perf_counter()
        self._last = self.start
        self._drawn = False

    def begin(self, total_tensors: int = 0, total_bytes: int = 0) -> None:
        """Start (or restart) the clock when the work itself starts."""
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.start = self._last = time.perf_counter()
        if self.enabled and self.stage and not self.tty:
            print(f"{self.action}: {self.stage} ({self._planned()})", file=self.stream, flush=True)

    def update(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += nbytes
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._show()

    def iterate(self, items: Iterable[T], sizes: Iterable[int] | None = None) -> Iterator[T]:
        """``items`` counted one by one (``sizes``: their byte counts, when known); ends the bar."""
        items = list(items)
        sizes = list(sizes) if sizes is not None else [0] * len(items)
        self.begin(len(items), sum(sizes))
        for item, size in zip(items, sizes):
            yield item
            self.update(size)
        self.finish()

    def finish(self) -> None:
        """Draw the bar full and end its line (terminal only; a log needs no closing line)."""
        if self.enabled and self.tty and self._drawn:
            self._show()
            print(file=self.stream, flush=True)
            self._drawn = False

    def _show(self) -> None:
        if self.tty:
            print("\r" + self.status() + "\x1b[K", end="", file=self.stream, flush=True)
            self._drawn = True
        else:
            print(self.status(), file=self.stream, flush=True)

    def _planned(self) -> str:
        parts = [f"{self.total_tensors} {self.unit}" if self.total_tensors else ""]
        parts.append(f"{self.total_bytes / 1e9:.2f} GB" if self.total_bytes else "")
        return ", ".join(p for p in parts if p) or "size unknown"

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def status(self) -> str:
        tensors = f"{self.tensors}/{self.total_tensors}" if self.total_tensors else str(self.tensors)
        size = (
            f"{self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB"
            if self.total_bytes
            else f"{self.bytes / 1e9:.2f} GB"
        )
        bar = ""
        if self.tty and self.total_tensors:
            done = round(BAR_WIDTH * min(self.tensors / self.total_tensors, 1.0))
            bar = f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] "
        head = f"{self.action}: {self.stage} " if self.stage else f"{self.action}: "
        rate = f", {self.bytes / 1e9 / max(self.seconds, 1e-9):.2f} GB/s" if self.bytes else ""
        return f"{head}{bar}{tensors} {self.unit}, {size}{rate}, {self.seconds:.0f} s"

    def summary(self, what: str = "") -> str:
        secs = self.seconds
        return (
            f"{self.action}: {what}{self.tensors} {self.unit} ({self.bytes / 1e9:.2f} GB) in {secs:.2f} s "
            f"({self.bytes / 1e9 / max(secs, 1e-9):.2f} GB/s)"
        )
