"""Ranks die with their launcher: SIGKILL, SIGTERM and Ctrl-C of the parent leave no rank and no output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RANK_SLEEP_S = 5.0  # a fake rank "converts" this long, then writes its part of the output

# Stands in for ``python -m bridge_core.cli.main ...`` in each rank.
FAKE_RANK = """#!{python}
import os, sys, time
from pathlib import Path
out, rank = Path(os.environ["FAKE_OUT"]), os.environ["RANK"]
(out / f"rank{{rank}}.pid").write_text(str(os.getpid()))
try:
    time.sleep({sleep})
except KeyboardInterrupt:
    (out / f"rank{{rank}}.interrupted").write_text("")
    sys.exit(130)
(out / f"rank{{rank}}.done").write_text("")
"""

# The parent: ``bridgectl fake`` through the real main(), whose command starts two ranks.
FAKE_COMMAND = """
def add_arguments(parser):
    pass

def run(args):
    from bridge_core.cli import launcher
    return launcher.spawn_ranks(args.argv, 2)
"""
PARENT = """
import sys
from bridge_core.cli import launcher, main
launcher.sys.executable = {fake!r}
main.COMMANDS["fake"] = ("fake_cmd", "a command that runs on two fake ranks")
sys.exit(main.main(["fake"]))
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has finished


def start_parent(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    out.mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_RANK.format(python=sys.executable, sleep=RANK_SLEEP_S))
    fake.chmod(0o755)
    (tmp_path / "fake_cmd.py").write_text(FAKE_COMMAND)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "FAKE_OUT": str(out), "PYTHONPATH": path, "BRIDGE_PLUGINS": ""}
    env.pop("WORLD_SIZE", None)
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT.format(fake=str(fake)))],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # its own process group, whose parent (pytest) is in this session: never an orphaned group, where
        # the kernel discards SIGTSTP (pytest started in the background, as a CI script may, is in one)
        preexec_fn=os.setpgrp,
    )
    return parent, out


def rank_pids(out: Path, parent: subprocess.Popen) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = sorted(out.glob("rank*.pid"))
        if len(pids) == 2 and all(p.read_text() for p in pids):
            return [int(p.read_text()) for p in pids]
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    raise AssertionError("the ranks did not start")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_ranks_die_with_their_launcher_and_never_complete(tmp_path, sig):
    parent, out = start_parent(tmp_path)
    pids = rank_pids(out, parent)
    killed_at = time.monotonic()
    parent.send_signal(sig)
    stdout, stderr = parent.communicate(timeout=60)
    while any(alive(pid) for pid in pids) and time.monotonic() - killed_at < 20:
        time.sleep(0.05)
    assert not [pid for pid in pids if alive(pid)], "ranks outlived their launcher"
    time.sleep(max(0.0, killed_at + RANK_SLEEP_S + 1 - time.monotonic()))  # past when they would finish
    assert sorted(p.name for p in out.glob("*.done")) == []  # the killed job never completes
    if sig == signal.SIGKILL:
        assert parent.returncode == -signal.SIGKILL
        return
    # An interrupt reaches the ranks (each can clean up), and the launcher says so once.
    assert sorted(p.name for p in out.glob("*.interrupted")) == ["rank0.interrupted", "rank1.interrupted"]
    assert parent.returncode == 128 + sig, stderr
    expected = "bridgectl: interrupted" + ("" if sig == signal.SIGINT else " (SIGTERM)")
    assert stderr.strip().splitlines() == [expected]
    assert stdout == ""


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def wait_until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_ctrl_z_stops_the_ranks_with_their_launcher_and_fg_resumes_them(tmp_path):
    parent, out = start_parent(tmp_path)
    pids = rank_pids(out, parent)
    parent.send_signal(signal.SIGTSTP)
    assert wait_until(lambda: state(parent.pid) == "T" and all(state(pid) == "T" for pid in pids))
    time.sleep(RANK_SLEEP_S + 1)
    assert list(out.glob("*.done")) == []  # nothing ran on while the job was stopped
    parent.send_signal(signal.SIGCONT)
    stdout, stderr = parent.communicate(timeout=60)
    assert parent.returncode == 0, stderr
    assert sorted(p.name for p in out.glob("*.done")) == ["rank0.done", "rank1.done"]
