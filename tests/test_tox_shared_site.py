"""``scripts/tox_shared_site.py``: tox envs see one shared install of the heavy dependencies.

A tiny hand-made wheel stands in for torch (no index is used): installed once into the shared
folder, seen by a fresh virtual environment through the .pth file, rebuilt when the constraints
change, and shadowed by what the environment installs itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "scripts" / "tox_shared_site.py"


def make_wheel(folder: Path, name: str, version: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
        zf.writestr(f"{info}/RECORD", "".join(f"{p},,\n" for p in [*files, f"{info}/RECORD"]))
    return wheel


@pytest.fixture
def env(tmp_path) -> tuple[Path, Path]:
    """A fresh virtual environment (no pip): its python and its site-packages."""
    root = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    py = root / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    return py, Path(site)


def run_helper(tmp_path: Path, site: Path, constraints: Path) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(tmp_path / "wheels"),
        "PIP_CONSTRAINT": str(constraints),
    }
    cmd = [sys.executable, str(HELPER), str(tmp_path / "shared"), str(site), "tinydep"]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300)


def version_seen(py: Path) -> str:
    code = "import tinydep, importlib.metadata as m; print(tinydep.VERSION, m.version('tinydep'))"
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_env_sees_the_shared_install_and_it_is_built_once(tmp_path, env):
    py, site = env
    make_wheel(tmp_path / "wheels", "tinydep", "1.0")
    make_wheel(tmp_path / "wheels", "tinydep", "2.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("tinydep==1.0\n")
    first = run_helper(tmp_path, site, constraints)
    assert first.returncode == 0, first.stderr
    assert "installing tinydep" in first.stdout
    assert version_seen(py) == "1.0 1.0"
    assert not list(site.glob("tinydep*")), "the package must live in the shared folder, not in the env"
    (shared,) = (tmp_path / "shared").glob("py*")

    constraints.write_text("# a comment changes no pin\ntinydep==1.0  # pinned\n\n")
    again = run_helper(tmp_path, site, constraints)
    assert again.returncode == 0 and "installing" not in again.stdout
    assert list((tmp_path / "shared").glob("py*")) == [shared]

    constraints.write_text("tinydep==2.0\n")  # a new pin: a new folder, the old one removed
    changed = run_helper(tmp_path, site, constraints)
    assert changed.returncode == 0 and "installing tinydep" in changed.stdout
    assert [p.name for p in (tmp_path / "shared").glob("py*")] != [shared.name] and not shared.exists()
    assert version_seen(py) == "2.0 2.0"


def test_the_envs_own_install_wins_over_the_shared_one(tmp_path, env):
    py, site = env
    make_wheel(tmp_path / "wheels", "tinydep", "1.0")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("")
    assert run_helper(tmp_path, site, constraints).returncode == 0
    with zipfile.ZipFile(make_wheel(tmp_path / "own", "tinydep", "3.0")) as zf:
        zf.extractall(site)
    assert version_seen(py) == "3.0 3.0"


def test_a_failed_install_is_one_line_and_leaves_nothing_used(tmp_path, env):
    py, site = env
    (tmp_path / "wheels").mkdir()
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("")
    proc = run_helper(tmp_path, site, constraints)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "tox_shared_site: pip failed (exit 1) installing tinydep"
    assert not (site / "_bridge_shared.pth").exists()
    assert not list((tmp_path / "shared").glob("py*/.complete"))
