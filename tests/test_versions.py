"""Each version number has one place: ``__version__`` in the package; the rest is derived or checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECTS = [REPO / "core", *sorted((REPO / "plugins").glob("bridge-*"))]


def package_version(init: Path) -> str:
    return re.search(r'^__version__ = "([^"]+)"$', init.read_text(encoding="utf-8"), flags=re.M).group(1)


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.name)
def test_the_distribution_reads_its_version_from_the_package(project):
    text = (project / "pyproject.toml").read_text(encoding="utf-8")
    project_table = text.split("[project]", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project_table and not re.search(r"^version\s*=", project_table, flags=re.M)
    path = re.search(r'^\[tool\.hatch\.version\]\npath = "([^"]+)"$', text, flags=re.M).group(1)
    assert package_version(project / path)


def test_the_templates_default_core_version_is_the_cores_minor():
    # `bridgectl new-plugin` passes the installed core's MAJOR.MINOR; baking with cookiecutter itself
    # takes this default, which must not fall behind.
    core = package_version(REPO / "core" / "src" / "bridge_core" / "__init__.py")
    context = json.loads((REPO / "cookiecutter-plugin" / "cookiecutter.json").read_text(encoding="utf-8"))
    assert context["__core_version"] == ".".join(core.split(".")[:2])
