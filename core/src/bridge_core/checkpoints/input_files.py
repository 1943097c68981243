"""The one rule for files read from a folder the user names (HF folder, Megatron checkpoint).

A file is read only if it is a regular file (a FIFO or device would hang or stream forever) and
it resolves inside the named folder: a symbolic link pointing elsewhere is refused, so that no
file from outside the folder is read or copied into an output. A Hugging Face cache snapshot
(``.../snapshots/<revision>``, whose files link to ``../../blobs/``) may also resolve into that
repository's ``blobs/`` folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bridge_core.errors import CheckpointError


def allowed_roots(folder: str | os.PathLike) -> list[Path]:
    """Where files of ``folder`` may resolve: the folder itself (and an HF cache snapshot's blobs)."""
    real = Path(os.path.realpath(folder))
    roots = [real]
    if real.parent.name == "snapshots":
        roots.append(real.parent.parent / "blobs")
    return roots


def check_input_file(path: str | os.PathLike, folder: str | os.PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file resolving inside ``folder``; else a ``CheckpointError`` naming it."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if not any(real == root or root in real.parents for root in allowed_roots(folder)):
        raise CheckpointError(f"{path}: {what} links to {real}, outside {folder}; refused")
    check_regular(path, what)
    return path


def check_regular(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse anything but a regular file (following links) before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: {what} is not a regular file; refused")


def folder_files(folder: str | os.PathLike, root: str | os.PathLike, what: str = "file") -> list[Path]:
    """The entries of ``folder`` (sorted), each checked by ``check_input_file`` against ``root``."""
    return [check_input_file(p, root, what) for p in sorted(Path(folder).iterdir())]
