"""Compile megatron-core's dataset helpers (``helpers_cpp``) for the running Python.

megatron-core 0.19.2's wheel ships ``helpers.cpp`` and a build for CPython 3.12 only; the trainer's
GPT datasets import ``helpers_cpp``. The tox env ``mcore019`` runs on the Python whose torch CPU
build lies on disk, so it builds the helpers for that Python (g++ and pybind11; about 20 s).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import sysconfig
from pathlib import Path

import pybind11


def main() -> int:
    # found without importing megatron.core (which imports torch)
    folder = Path(importlib.util.find_spec("megatron").submodule_search_locations[0]) / "core" / "datasets"
    target = folder / f"helpers_cpp{sysconfig.get_config_var('EXT_SUFFIX')}"
    if target.exists():
        return 0
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    command = [
        "g++",
        "-O3",
        "-shared",
        "-std=c++17",
        "-fPIC",
        *includes,
        str(folder / "helpers.cpp"),
        "-o",
        str(target),
    ]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
