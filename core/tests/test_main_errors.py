"""``bridgectl``'s last word: interrupts and OS errors as one line with the right exit code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = """
import sys
from bridge_core.cli import main
main.COMMANDS["fake"] = ("fake_cmd", "a command that does what the test says")
sys.exit(main.main(["fake"]))
"""


def run_fake(tmp_path, body: str, env: dict | None = None, signal_after: float | None = None):
    (tmp_path / "fake_cmd.py").write_text(
        "import os, sys, time\n\ndef add_arguments(parser):\n    pass\n\n\ndef run(args):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environ = {**os.environ, "PYTHONPATH": path, "BRIDGE_PLUGINS": "", **(env or {})}
    environ.pop("WORLD_SIZE", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if signal_after is not None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err.strip().splitlines()


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    assert run_fake(tmp_path, "raise KeyboardInterrupt") == (130, "", ["bridgectl: interrupted"])


def test_a_launched_rank_leaves_the_interrupted_line_to_its_launcher(tmp_path):
    env = {"BRIDGECTL_ERROR_FILE": str(tmp_path / "rank0.error")}
    assert run_fake(tmp_path, "raise KeyboardInterrupt", env=env) == (130, "", [])


def test_sigterm_unwinds_the_command_so_its_cleanup_runs(tmp_path):
    body = f"""
    try:
        open({str(tmp_path / "started")!r}, "w").close()
        time.sleep(60)
    finally:
        open({str(tmp_path / "cleaned")!r}, "w").close()
    """
    assert run_fake(tmp_path, body, signal_after=0) == (143, "", ["bridgectl: interrupted (SIGTERM)"])
    assert (tmp_path / "cleaned").exists()


@pytest.mark.parametrize(("errno_name", "text"), [("ENOSPC", "No space left on device"), ("EROFS", "Read-only")])
def test_an_os_error_about_a_path_is_a_one_line_error(tmp_path, errno_name, text):
    number = f"errno.{errno_name}"
    body = f"import errno\nraise OSError({number}, os.strerror({number}), '/data/out/model.safetensors')"
    code, out, err = run_fake(tmp_path, body)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"bridgectl fake: error: /data/out/model.safetensors: {text}")


def test_a_real_bug_is_still_an_internal_error(tmp_path):
    code, _, err = run_fake(tmp_path, "return {}['x']")
    assert code == 1 and err == ["bridgectl fake: internal error: KeyError: 'x' (rerun with --debug for the traceback)"]


def test_library_log_warnings_stay_off_the_terminal():
    """torch's CUDA build with the GPUs hidden logs "No CUDA runtime is found" when megatron-core imports
    its C++ extension helper: with nothing configured, Python's last-resort handler printed it on stderr."""
    import subprocess
    import sys

    code = (
        "import logging; from bridge_core.cli.main import quiet_libraries; quiet_libraries(); "
        "[logging.getLogger(n).warning('No CUDA runtime is found') for n in "
        "('torch.utils.cpp_extension', 'megatron.core.utils')]"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.parametrize("body", ["print('one short line')", "print('x' * (1 << 20))"], ids=["buffered", "large"])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, body):
    """``bridgectl plugins | head -1``: the reader leaving is no error (exit 141, like a tool killed by SIGPIPE),
    whether the write fails in the command or only when its buffered output is flushed."""
    (tmp_path / "fake_cmd.py").write_text(f"def add_arguments(parser):\n    pass\n\n\ndef run(args):\n    {body}\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environ = {**os.environ, "PYTHONPATH": path, "BRIDGE_PLUGINS": ""}
    environ.pop("WORLD_SIZE", None)
    environ.pop("PYTHONUNBUFFERED", None)  # "buffered": the write fails only when the output is flushed
    proc = subprocess.Popen([sys.executable, "-c", PARENT], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""


ENTRY = """
import sys
from bridge_core.cli import main
main.COMMANDS["fake"] = ("fake_cmd", "a command that does what the test says")
sys.argv = ["bridgectl", "fake"]
sys.exit(main.main())  # as the console script calls it: no argv
"""


def test_the_bridgectl_process_skips_the_teardown_but_not_its_exit_duties(tmp_path):
    """With torch loaded, the command's process ends without the interpreter's teardown (a module's
    object is never finalised), yet its threads finish, atexit handlers and pending finalizers run,
    buffered output is flushed and the exit code is the command's."""
    body = """
import atexit, tempfile, threading, time, weakref, torch
class Torn:
    def __del__(self):
        print("torn down", flush=True)
sys.modules[__name__].torn = Torn()
atexit.register(lambda: print("atexit ran", flush=True))
folder = tempfile.TemporaryDirectory()
sys.modules[__name__].folder = folder
print("temporary", folder.name)
def late():
    time.sleep(0.3)
    print("thread done")
threading.Thread(target=late).start()
print("buffered")
return 3
"""
    (tmp_path / "fake_cmd.py").write_text(
        "import sys\n\ndef add_arguments(parser):\n    pass\n\n\ndef run(args):\n" + textwrap.indent(body, "    ")
    )
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environ = {**os.environ, "PYTHONPATH": path, "BRIDGE_PLUGINS": ""}
    environ.pop("WORLD_SIZE", None)
    environ.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.run([sys.executable, "-c", ENTRY], env=environ, capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 3, proc.stderr
    assert {"buffered", "thread done", "atexit ran"} <= set(lines) and "torn down" not in lines, lines
    temporary = next(line.split(" ", 1)[1] for line in lines if line.startswith("temporary "))
    assert not os.path.exists(temporary)
