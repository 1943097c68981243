"""Finish the baked plugin (cookiecutter runs this in the new project's folder after generating)."""

import os
import shutil
import stat
from pathlib import Path

# The template's folder: in a bridge checkout it is <checkout>/cookiecutter-plugin, next to dist/.
TEMPLATE_DIR = r"""{{ cookiecutter._repo_dir }}"""


def make_scripts_executable(root: Path) -> None:
    """The example scripts keep their executable bit even when the template lost it (e.g. in a zip)."""
    for script in root.glob("examples/*/*.sh"):
        mode = script.stat().st_mode
        script.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def remove_bytecode(root: Path) -> None:
    """No __pycache__ or .pyc in the baked tree (pip compiles an installed template's .py files)."""
    for cache in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for pyc in root.rglob("*.py[co]"):
        pyc.unlink()


def core_wheelhouse(template_dir: str) -> Path | None:
    """Where bridge-core wheels were built: $BRIDGE_WHEELHOUSE, else the checkout's dist/ (None: nowhere)."""
    candidates = [os.environ.get("BRIDGE_WHEELHOUSE", "")]
    if template_dir:
        candidates.append(str(Path(template_dir).parent / "dist"))
    for candidate in candidates:
        if candidate and list(Path(candidate).glob("bridge_core-*.whl")):
            return Path(candidate)
    return None


def copy_core_wheels(root: Path, template_dir: str) -> None:
    """Put the local bridge-core wheels into wheels/, where tox and CI look before PyPI."""
    source = core_wheelhouse(template_dir)
    if source is None:
        print(
            "note: no bridge-core wheel found (set BRIDGE_WHEELHOUSE to a folder built by bridge's "
            "scripts/build_dists.py): tox will install bridge-core from PyPI"
        )
        return
    (root / "wheels").mkdir(exist_ok=True)
    for wheel in sorted(source.glob("bridge_core-*.whl")):
        shutil.copy2(wheel, root / "wheels" / wheel.name)
        print(f"copied {wheel} into wheels/: tox and CI test against it until bridge-core is on PyPI")


if __name__ == "__main__":
    make_scripts_executable(Path(os.getcwd()))
    remove_bytecode(Path(os.getcwd()))
    copy_core_wheels(Path(os.getcwd()), TEMPLATE_DIR)
