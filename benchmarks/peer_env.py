"""The peer's own virtual environment: mbridge 0.15.1 next to the same torch / megatron-core /
transformers as ours, plus this checkout's packages (no dependencies pulled), so that one worker
process can run both sides on the very same model object.

Created once under the cache folder and reused while its requirements are unchanged.
``python benchmarks/peer_env.py CACHE`` creates it and prints its python.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# torch==2.13.0 takes the CPU wheel the machines keep locally; the rest pins what CI uses.
REQUIREMENTS = [
    "torch==2.13.0",
    "megatron-core==0.16.1",
    "transformers==5.24.0",
    "safetensors==0.8.0",
    "einops",
    "psutil",
    "pluggy>=1.3",
    "importlib-metadata>=6.0",
    "packaging>=22",
]
PEER = "mbridge==0.15.1"  # installed without dependencies: its extras would pull CUDA packages
OURS = ["core", "plugins/bridge-llama", "plugins/bridge-qwen"]


def _python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def ensure(cache: str | Path, quiet: bool = True) -> str:
    """The peer venv's python, created or refreshed as needed."""
    folder = Path(cache) / "mbridge-venv"
    stamp = folder / ".bench-stamp.json"
    want = {"requirements": REQUIREMENTS, "peer": PEER, "ours": OURS, "root": str(ROOT)}
    python = _python(folder)
    if stamp.is_file() and python.exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return str(python)
        except ValueError:
            pass
    print(f"[bench] creating the mbridge environment in {folder} (a few minutes, once)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(folder)
    q = ["-q"] if quiet else []
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *q]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    subprocess.run([*pip, "--no-deps", PEER], check=True)
    subprocess.run([*pip, "--no-deps", *[a for p in OURS for a in ("-e", str(ROOT / p))]], check=True)
    stamp.write_text(json.dumps(want))
    return str(python)


if __name__ == "__main__":
    print(ensure(sys.argv[1] if len(sys.argv) > 1 else ROOT / "benchmarks" / ".cache", quiet=False))
