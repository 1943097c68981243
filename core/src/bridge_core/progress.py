"""Progress of long conversions on stderr (rank 0 only), and the one-line summary at the end."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts tensors and bytes; prints a throttled status line and a final summary.

    ``total_tensors``/``total_bytes`` may be 0 when unknown. Only ``enabled`` instances print.
    """

    def __init__(
        self,
        action: str,
        total_tensors: int = 0,
        total_bytes: int = 0,
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 2.0,
    ):
        self.action = action
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.start = time.perf_counter()
        self._last = self.start

    def begin(self, total_tensors: int = 0, total_bytes: int = 0) -> None:
        """Start (or restart) the clock when the work itself starts."""
        self.total_tensors, self.total_bytes = total_tensors, total_bytes
        self.tensors = self.bytes = 0
        self.start = self._last = time.perf_counter()

    def update(self, nbytes: int) -> None:
        self.tensors += 1
        self.bytes += nbytes
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            print(self.status(), file=self.stream, flush=True)

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
        return f"{self.action}: {tensors} tensors, {size}, {self.bytes / 1e9 / max(self.seconds, 1e-9):.2f} GB/s"

    def summary(self, what: str = "") -> str:
        secs = self.seconds
        return (
            f"{self.action}: {what}{self.tensors} tensors ({self.bytes / 1e9:.2f} GB) in {secs:.2f} s "
            f"({self.bytes / 1e9 / max(secs, 1e-9):.2f} GB/s)"
        )
