"""What long work shows: stage lines, bars on a terminal, lines in a log, --no-progress; timed summaries."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from bridge_core import progress as progress_mod
from bridge_core import timing
from bridge_core.progress import Progress, stage


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def progress_on(monkeypatch):
    monkeypatch.delenv(progress_mod.PROGRESS_ENV, raising=False)
    monkeypatch.delenv("RANK", raising=False)


def run(progress: Progress, n: int = 5) -> None:
    for _ in progress.iterate(range(n), [100_000_000] * n):
        pass


def test_a_terminal_gets_a_bar_redrawn_in_place():
    out = Terminal()
    run(Progress("import", stream=out, interval=0, unit="Megatron parameters", stage="reading weights"))
    text = out.getvalue()
    assert text.count("\r") >= 5 and text.endswith("\n")
    assert "import: reading weights [########################] 5/5 Megatron parameters, 0.50/0.50 GB" in text


def test_a_log_gets_a_line_per_stage_and_no_carriage_returns():
    out = io.StringIO()
    run(Progress("import", stream=out, unit="HF tensors", stage="writing"))  # LOG_INTERVAL: no status line
    assert out.getvalue() == "import: writing (5 HF tensors, 0.50 GB)\n"
    stage("import", "building the Megatron model", stream=out)
    assert out.getvalue().splitlines()[-1] == "import: building the Megatron model"


def test_no_progress_silences_bars_and_stage_lines(monkeypatch):
    progress_mod.set_progress(False)
    try:
        out, term = io.StringIO(), Terminal()
        run(Progress("import", stream=out, interval=0, stage="reading weights"))
        run(Progress("import", stream=term, interval=0, stage="reading weights"))
        stage("import", "building the Megatron model", stream=out)
        assert out.getvalue() == term.getvalue() == ""
        assert os.environ[progress_mod.PROGRESS_ENV] == "0"  # inherited by rank processes
    finally:
        progress_mod.set_progress(True)


def test_only_rank_0_prints_stage_lines(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("RANK", "1")
    stage("import", "building the Megatron model", stream=out)
    assert out.getvalue() == ""


def test_gguf_dequantization_loop_is_counted(capsys, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from bridge_core.checkpoints.gguf_source import _shown_stages

    class FakeTensor:
        n_bytes = 1000

    def stand_in(path, return_tensors=False):
        return {"config": {}}

    original_tqdm = gguf_utils.tqdm
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", stand_in)
    with _shown_stages("import"):
        gguf_utils.load_gguf_checkpoint("m.gguf", return_tensors=False)
        seen = list(gguf_utils.tqdm([FakeTensor()] * 3, desc="Converting and de-quantizing GGUF tensors..."))
    assert len(seen) == 3 and gguf_utils.tqdm is original_tqdm and gguf_utils.load_gguf_checkpoint is stand_in
    out = capsys.readouterr().out  # stdout: stderr is for warnings and errors
    assert "import: parsing the GGUF metadata\n" in out
    assert "import: dequantizing (3 GGUF tensors, 0.00 GB)" in out


def test_process_start_time_is_the_process_start_not_the_import():
    code = (
        "import time; time.sleep(1.5); from bridge_core.timing import process_start_time; "
        "print(time.time() - process_start_time())"
    )
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 1.5 <= age < 60


def test_parts_add_up_to_the_total_and_are_named(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = timing.Timeline()
    line.start = time.time() - 10
    line.mark("start-up", at=line.start + 1)
    line.mark("decoding GGUF", at=line.start + 7)
    line.mark("writing", at=line.start + 9)
    assert line.parts() == [("start-up", 1.0), ("decoding GGUF", 6.0), ("writing", 2.0)]
    assert line.summary().startswith("total 10.0 s (start-up 1.0 s, decoding GGUF 6.0 s, writing 2.0 s)")


def test_rank_processes_continue_the_launchers_timeline(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    parent = timing.Timeline()
    parent.start = time.time() - 20
    parent.mark("start-up", at=parent.start + 1)
    parent.mark("decoding GGUF", at=parent.start + 15)
    with parent.handed_over():
        env = dict(os.environ)
    assert timing.STARTED_ENV not in os.environ  # restored after the spawn
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(timing.STARTED_ENV, env[timing.STARTED_ENV])
    monkeypatch.setenv(timing.PARTS_ENV, env[timing.PARTS_ENV])
    rank = timing.Timeline()
    rank.mark_startup()
    names = [name for name, _ in rank.parts()]
    assert names == ["start-up", "decoding GGUF", "rank start-up"]
    assert rank.total >= 20 and json.loads(env[timing.PARTS_ENV])[1][0] == "decoding GGUF"


def test_outside_a_launcher_inherited_variables_are_ignored(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(timing.STARTED_ENV, "1.0")
    assert timing.Timeline().start > 1.0
