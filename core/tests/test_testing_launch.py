"""``testing.launch.torchrun`` retries a port another process took before the launcher bound it (parallel
test workers picked the same free port: EADDRINUSE failed 17 tests of an ``-n 12`` run on the H200)."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("torch")

from bridge_core.runtime.ports import free_port
from bridge_core.testing import launch


def test_a_taken_port_is_retried_with_another(tmp_path, monkeypatch):
    script = tmp_path / "rank.py"
    script.write_text("import os\nprint('rank', os.environ['RANK'])\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1], free_port()])
        monkeypatch.setattr(launch, "free_port", lambda: next(ports))
        proc = launch.torchrun([str(script)], nproc=1, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rank 0" in proc.stdout
