"""``metrics.jsonl`` (one JSON object per logged step) and the progress line shown on a terminal.

``tflops_per_gpu``: global tokens/s x training FLOPs per token (``bridge_core.training.flops``) / world
size / 1e12; ``null`` when the model has a block the calculator cannot count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def peak_memory_gib() -> float:
    """Peak memory of this process: CUDA allocations with a GPU, else the resident set size."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class MetricsLog:
    """Appends step records to ``<folder>/metrics.jsonl``; on resume drops records past the resumed step."""

    def __init__(self, folder: str | Path | None, resume_step: int = 0, enabled: bool = True):
        self.path = Path(folder) / METRICS if folder is not None and enabled else None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 0


def progress_line(record: dict[str, Any], iters: int, elapsed: float, done_here: int) -> str:
    """``step 12/20 | loss 5.2013 | lr 2.9e-04 | grad 1.234 | 18,240 tok/s | 312.4 TFLOP/s/GPU | ETA 3s``."""
    step = record["step"]
    eta = elapsed / max(done_here, 1) * (iters - step)
    parts = [
        f"step {step}/{iters}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.2e}",
        f"grad {record['grad_norm']:.3f}" if record.get("grad_norm") is not None else "grad -",
        f"{record['tokens_per_s']:,.0f} tok/s",
        f"ETA {_duration(eta)}",
    ]
    if record.get("tflops_per_gpu") is not None:
        parts.insert(-1, f"{_tflops(record['tflops_per_gpu'])} TFLOP/s/GPU")
    if record.get("val_loss") is not None:
        parts.insert(2, f"val {record['val_loss']:.4f}")
    return " | ".join(parts)


def _tflops(value: float) -> str:
    """Three significant digits at least (a CPU toy runs at a few thousandths)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressPrinter:
    """A rewritten line on a terminal, one line per logged step otherwise (rank 0 only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()

    def show(self, line: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stdout.write("\r\033[K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def close(self) -> None:
        if self.tty:
            sys.stdout.write("\n")
            sys.stdout.flush()
