"""A baked plugin tests against the local bridge-core wheel when none is published, and carries no bytecode.

The template's post-generation hook copies ``bridge_core-*.whl`` from ``$BRIDGE_WHEELHOUSE`` or from
the checkout's ``dist/`` (built by ``scripts/build_dists.py``) into the plugin's ``wheels/``, which its
tox.ini puts on pip's find-links; and it deletes ``__pycache__`` folders and ``.pyc`` files (pip
compiles the template's Python files when bridge-core is installed from its wheel).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import bridge_core

pytest.importorskip("cookiecutter", reason="needs bridge-core[template]: run tox -e template")

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "cookiecutter-plugin"
CONTEXT = {"family": "pkgtest", "architectures": "PkgTestForCausalLM", "model_type": "llama", "kind": "LLM"}


def core_wheel(folder: Path, version: str = bridge_core.__version__) -> Path:
    """A minimal installable ``bridge-core`` wheel (metadata only) standing in for the real one."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"bridge_core-{version}-py3-none-any.whl"
    info = f"bridge_core-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: bridge-core\nVersion: {version}\nProvides-Extra: torch\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", f"{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return wheel


def bake(template: Path, out: Path, tmp_path: Path) -> Path:
    from cookiecutter.main import cookiecutter

    settings = {"replay_dir": str(tmp_path / "replay"), "cookiecutters_dir": str(tmp_path / "cc")}
    return Path(
        cookiecutter(
            str(template), no_input=True, extra_context=CONTEXT, output_dir=str(out), default_config=settings
        )
    )


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of the repository's template inside a fake checkout (``<checkout>/cookiecutter-plugin``)."""
    root = tmp_path / "checkout"
    shutil.copytree(TEMPLATE, root / "cookiecutter-plugin", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_the_wheelhouse_wheel_is_copied_and_toxs_requirement_resolves_to_it(tmp_path, checkout, monkeypatch):
    wheel = core_wheel(tmp_path / "wheelhouse")
    monkeypatch.setenv("BRIDGE_WHEELHOUSE", str(tmp_path / "wheelhouse"))
    project = bake(checkout / "cookiecutter-plugin", tmp_path / "out", tmp_path)
    assert sorted(p.name for p in (project / "wheels").iterdir()) == [wheel.name]
    tox_ini = (project / "tox.ini").read_text()
    assert "PIP_FIND_LINKS = {toxinidir}/wheels {env:PIP_FIND_LINKS:}" in tox_ini
    # the very requirements py-corelatest and py-coremin install resolve from wheels/ with no index
    for env in ("corelatest", "coremin"):
        spec = re.search(rf"^    {env}: {{env:BRIDGE_CORE_\w*SPEC:(.+)}}$", tox_ini, flags=re.M).group(1)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-index", "--find-links",
             str(project / "wheels"), "-d", str(tmp_path / f"dl-{env}"), spec],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (spec, proc.stderr)
    assert "--find-links wheels" in (project / ".github" / "workflows" / "verify.yml").read_text()


def test_a_checkouts_dist_folder_is_found_without_the_variable(tmp_path, checkout, monkeypatch, capfd):
    monkeypatch.delenv("BRIDGE_WHEELHOUSE", raising=False)
    wheel = core_wheel(checkout / "dist")
    project = bake(checkout / "cookiecutter-plugin", tmp_path / "out", tmp_path)
    assert [p.name for p in (project / "wheels").iterdir()] == [wheel.name]
    assert "into wheels/" in capfd.readouterr().out


def test_without_any_wheel_the_bake_says_pypi_is_used(tmp_path, checkout, monkeypatch, capfd):
    monkeypatch.delenv("BRIDGE_WHEELHOUSE", raising=False)
    project = bake(checkout / "cookiecutter-plugin", tmp_path / "out", tmp_path)
    assert not (project / "wheels").exists()
    assert "no bridge-core wheel found (set BRIDGE_WHEELHOUSE" in capfd.readouterr().out


def test_baked_tree_holds_no_bytecode(tmp_path, checkout, monkeypatch):
    """As after ``pip install bridge-core``: compiled files next to the template's Python files."""
    monkeypatch.delenv("BRIDGE_WHEELHOUSE", raising=False)
    project_dir = checkout / "cookiecutter-plugin" / "{{cookiecutter.__project_slug}}"
    for py in [p for p in project_dir.rglob("*.py") if "{%" not in p.read_text()]:
        cache = py.parent / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / f"{py.stem}.cpython-311.pyc").write_bytes(b"\0")
    assert list(project_dir.rglob("*.pyc"))
    project = bake(checkout / "cookiecutter-plugin", tmp_path / "out", tmp_path)
    assert list(project.rglob("__pycache__")) == [] and list(project.rglob("*.pyc")) == []
    assert (project / "src" / "bridge_pkgtest" / "plugin.py").is_file()
