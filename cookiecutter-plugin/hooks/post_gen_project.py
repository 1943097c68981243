"""Finish the baked plugin (cookiecutter runs this in the new project's folder after generating)."""

import os
import stat
from pathlib import Path


def make_scripts_executable(root: Path) -> None:
    """The example scripts keep their executable bit even when the template lost it (e.g. in a zip)."""
    for script in root.glob("examples/*/*.sh"):
        mode = script.stat().st_mode
        script.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


if __name__ == "__main__":
    make_scripts_executable(Path(os.getcwd()))
