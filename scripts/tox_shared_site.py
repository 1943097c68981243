"""Give a tox environment the heavy dependencies (torch, megatron-core, ...) from one shared folder.

    python scripts/tox_shared_site.py SHARED_DIR ENV_SITE_PACKAGES REQUIREMENT...

Installs REQUIREMENTs once (``pip install --target``, honouring PIP_CONSTRAINT and the other PIP_*
settings) into ``SHARED_DIR/py<X.Y>-<key>``, where the key hashes the Python version, the platform,
the requirements and the constraint files' pins (comments aside): a change to any of them builds a new folder
(and removes the older ones of that Python). Then writes ``_bridge_shared.pth`` into
ENV_SITE_PACKAGES, so that the environment's Python appends the folder to ``sys.path``. The
environment's own site-packages stays first: what it installs itself wins over the shared copy.
A lock file serializes concurrent environments (``tox -p``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PTH_NAME = "_bridge_shared.pth"
DONE = ".complete"


def constraint_files() -> list[Path]:
    """The files PIP_CONSTRAINT names (space-separated, as pip reads it)."""
    return [Path(p) for p in os.environ.get("PIP_CONSTRAINT", "").split() if p]


def pins(file: Path) -> str:
    """A constraint file's requirement lines, without comments and blank lines (a comment changes nothing)."""
    lines = (line.split("#", 1)[0].strip() for line in file.read_text().splitlines())
    return "\n".join(line for line in lines if line)


def shared_key(requirements: list[str]) -> str:
    """A short hash of what the shared folder's content depends on."""
    h = hashlib.sha256()
    for part in (sys.version, platform.platform(), *sorted(requirements)):
        h.update(part.encode() + b"\0")
    for file in constraint_files():
        h.update(pins(file).encode() if file.is_file() else str(file).encode())
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"):
        h.update(os.environ.get(name, "").encode() + b"\0")
    return h.hexdigest()[:12]


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (POSIX; elsewhere no lock)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: tox -p may race there
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shared(shared_dir: Path, requirements: list[str]) -> Path:
    """The folder holding ``requirements``, installed now unless a complete one exists already."""
    prefix = f"py{sys.version_info[0]}.{sys.version_info[1]}-"
    target = shared_dir / (prefix + shared_key(requirements))
    with locked(shared_dir / ".lock"):
        if (target / DONE).is_file():
            return target
        shutil.rmtree(target, ignore_errors=True)  # an interrupted install leaves no DONE file
        print(f"tox_shared_site: installing {' '.join(requirements)} into {target} (once for every env)", flush=True)
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-warn-script-location", "--target", str(target)]
        subprocess.run([*cmd, *requirements], check=True)
        for old in shared_dir.glob(prefix + "*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        (target / DONE).write_text("\n".join(requirements) + "\n")
    return target


def link(site_packages: Path, shared: Path) -> Path:
    """Write the .pth file that puts ``shared`` on the environment's ``sys.path``."""
    pth = site_packages / PTH_NAME
    pth.write_text(f"{shared}\n")
    return pth


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    shared_dir, site_packages, requirements = Path(args[0]).resolve(), Path(args[1]), args[2:]
    if not site_packages.is_dir():
        print(f"tox_shared_site: {site_packages} is not a site-packages folder", file=sys.stderr)
        return 2
    try:
        shared = ensure_shared(shared_dir, requirements)
    except subprocess.CalledProcessError as exc:
        failed = f"pip failed (exit {exc.returncode}) installing {' '.join(requirements)}"
        print(f"tox_shared_site: {failed}", file=sys.stderr)
        return 1
    link(site_packages, shared)
    return 0


if __name__ == "__main__":
    sys.exit(main())
