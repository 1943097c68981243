"""The wheelhouse the docs install from: ``scripts/build_dists.py`` then ``pip install --find-links dist``.

Builds the core's and bridge-llama's wheels, installs them into a fresh virtual environment as the
README says (bridge-core with its light dependencies from the index, bridge-llama with ``--no-deps``
so that torch stays out), and runs the installed ``bridgectl``. Versions come from ``__version__``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytest.importorskip("build", reason="needs the build package: run tox -e ecosystem")

REPO = Path(__file__).resolve().parents[1]
PROJECTS = {"bridge_core": REPO / "core", "bridge_llama": REPO / "plugins" / "bridge-llama"}


def package_version(project: Path, module: str) -> str:
    text = (project / "src" / module / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, flags=re.M).group(1)


def build_wheels(outdir: Path, *projects: Path) -> subprocess.CompletedProcess:
    script = REPO / "scripts" / "build_dists.py"
    cmd = [sys.executable, str(script), "--wheel-only", "--no-check", "--outdir", str(outdir), *map(str, projects)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = build_wheels(out, *PROJECTS.values())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_one_wheel_per_distribution_named_by_its_package_version(wheelhouse):
    names = sorted(p.name for p in wheelhouse.iterdir())
    expected = sorted(f"{m}-{package_version(p, m)}-py3-none-any.whl" for m, p in PROJECTS.items())
    assert names == expected


def test_the_core_wheel_says_it_is_typed(wheelhouse):
    """PEP 561: plugin authors' type checkers read bridge_core's annotations (mypy checks them in tox -e lint)."""
    import zipfile

    (wheel,) = wheelhouse.glob("bridge_core-*.whl")
    assert "bridge_core/py.typed" in zipfile.ZipFile(wheel).namelist()


def test_rebuilding_replaces_the_old_files(wheelhouse, tmp_path):
    stale = wheelhouse / "bridge_llama-0.0.1-py3-none-any.whl"
    stale.write_bytes(b"")
    proc = build_wheels(wheelhouse, PROJECTS["bridge_llama"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists()
    assert len(list(wheelhouse.glob("bridge_llama-*.whl"))) == 1


def test_documented_install_line_works_from_the_wheelhouse(wheelhouse, tmp_path):
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env)
    py = env / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--find-links", str(wheelhouse)]
    # the light core resolves its dependencies from the index as a user's pip would; the plugin
    # would pull torch, so it goes in without dependencies here
    for args in (["bridge-core"], ["--no-deps", "--no-index", "bridge-llama"]):
        proc = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    version = subprocess.run([str(env / "bin" / "bridgectl"), "--version"], capture_output=True, text=True)
    assert package_version(PROJECTS["bridge_core"], "bridge_core") in version.stdout, version
    listing = subprocess.run(
        [str(env / "bin" / "bridgectl"), "plugins", "--json"], capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)["plugins"]}
    assert plugins["llama"]["status"] == "loaded"
    assert plugins["llama"]["version"] == package_version(PROJECTS["bridge_llama"], "bridge_llama")
    # the wheel carries the plugin template (bridgectl new-plugin bakes it when installed from a wheel)
    template = subprocess.run(
        [str(py), "-c", "from bridge_core.authoring.scaffold import template_dir; print(template_dir())"],
        capture_output=True,
        text=True,
    )
    assert template.stdout.strip().endswith("bridge_core/_template"), template
