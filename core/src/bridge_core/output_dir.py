"""Atomic output folders: write into a hidden sibling, rename into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bridge_core.errors import CheckpointError


def check_output_dir(path: str | os.PathLike, overwrite: bool, what: str = "output folder") -> Path:
    """Refuse an existing non-empty ``path`` unless ``overwrite`` (and a path that is a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path}: {what} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{path}: {what} exists and is not empty; pass --overwrite (overwrite=True) to replace it"
        )
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "output folder") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on failure it is removed.

    A reader never sees a half-written ``path``: it either does not exist, is the old one, or is
    complete. Every file and folder is flushed to disk before the rename, and the parent folder
    after it, so a crash (power loss included) cannot leave a complete-looking folder with missing data.
    """
    path = check_output_dir(path, overwrite, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_tree(tmp)
    trash = path.parent / f".{path.name}.old-{os.getpid()}"
    if path.exists():
        path.rename(trash)
    tmp.rename(path)
    fsync_path(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` (files already fsynced by their writer cost nothing)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if not (Path(folder) / name).is_symlink():
                fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder (a folder's entries: created, renamed, removed files)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
