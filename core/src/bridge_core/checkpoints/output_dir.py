"""Atomic output folders: write into a hidden sibling, rename into place only when complete.

One writer per output path at a time: the writer holds an exclusive ``flock`` on a hidden lock file
next to the output (``.<name>.lock``) from the start of the write to the final rename, so a second
writer to the same path is refused at once (the kernel drops the lock when its owner dies, so a
killed run never blocks the next one). Holding the lock, the writer removes the hidden partial
folders that killed runs left behind, and the final rename never replaces a folder it did not
move away itself (``renameat2(RENAME_NOREPLACE)``): a target that appears meanwhile is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from bridge_core.errors import BridgeError, CheckpointError

# errno values that mean "this output cannot be written here" (reported by path, in one line)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO}


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


def check_outside_inputs(output: str | os.PathLike, what: str, *inputs: str | os.PathLike | None) -> None:
    """Refuse an ``output`` that is, contains or lies inside one of ``inputs`` (symlinks resolved).

    Call it before anything is written or deleted: with ``--overwrite`` such an output would destroy
    its own input. ``None`` inputs are skipped.
    """
    out = Path(os.path.realpath(output))
    for given in inputs:
        if given is None:
            continue
        source = Path(os.path.realpath(given))
        relation = (
            "is"
            if out == source
            else "contains"
            if out in source.parents
            else "lies inside"
            if source in out.parents
            else None
        )
        if relation:
            raise CheckpointError(f"{output}: {what} {relation} the input {given}; choose a folder outside it")


def write_error(exc: BaseException, path: str | os.PathLike) -> CheckpointError | None:
    """A one-line ``CheckpointError`` for an ``OSError`` that means ``path`` cannot be written (disk
    full, read-only, no permission ...), looked for in ``exc``, its causes and torch's
    ``CheckpointException`` failures; None when ``exc`` is something else."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            return CheckpointError(f"{path}: cannot write it: {os.strerror(e.errno)}{where}; nothing was written")
        for failure in (getattr(e, "failures", None) or {}).values():  # torch.distributed.checkpoint
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, BaseException):
                todo.append(inner)
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    code = filesystem_problem(path)  # e.g. torch's zip writer reports a short write as a RuntimeError
    if code is not None:
        return CheckpointError(f"{path}: cannot write it: {os.strerror(code)}; nothing was written")
    return None


def filesystem_problem(path: str | os.PathLike) -> int | None:
    """``errno.EROFS`` or ``errno.ENOSPC`` when the file system that holds ``path`` is read-only or
    (nearly: under 256 KiB) full, else None."""
    folder = Path(os.path.abspath(path))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 256 * 1024:
        return errno.ENOSPC
    return None


@contextlib.contextmanager
def writing_to(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` that means "cannot write here" into a one-line error naming ``path``."""
    try:
        yield
    except (BridgeError, KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # torch's CheckpointException is a BaseException
        error = write_error(exc, path)
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of output ``path`` (``.<name>.lock`` in its parent) while inside.

    Refused at once when another live process holds it. The lock file is removed on release; a
    waiter that locked a file removed meanwhile notices (the inode changed) and refuses too.
    """
    lock = path.parent / f".{path.name}.lock"
    for _attempt in range(100):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CheckpointError(
                f"{path}: another process{_read_owner(lock)} is writing this folder now; "
                "wait for it or choose another path"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        os.close(fd)  # locked a file its previous owner had just removed: take the new one
    else:
        raise CheckpointError(f"{lock}: cannot take the lock of {path}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # still holding the lock: nobody else is between open and check
    finally:
        os.close(fd)


def _read_owner(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(lock.read_text().strip())})"
    return ""


def remove_stale(path: Path) -> None:
    """Remove hidden partial and old folders of ``path`` left by killed runs (call holding the lock)."""
    name = glob.escape(path.name)
    for stale in [*path.parent.glob(f".{name}.partial-*"), *path.parent.glob(f".{name}.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "output folder") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path``, on failure it is removed.

    A reader never sees a half-written ``path``: it either does not exist, is the old one, or is
    complete. Every file and folder is flushed to disk before the rename, and the parent folder
    after it, so a crash (power loss included) cannot leave a complete-looking folder with missing data.
    Any exception (Ctrl-C included) removes the temporary folder; disk-full and read-only errors
    become one-line ``CheckpointError`` s naming ``path``.
    """
    given = path
    path = Path(os.path.abspath(check_output_dir(path, overwrite, what)))  # "." has a name and a parent
    with writing_to(given):
        path.parent.mkdir(parents=True, exist_ok=True)
        with output_lock(path):
            remove_stale(path)
            tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
            tmp.mkdir()
            try:
                yield tmp
                check_output_dir(path, overwrite, what)  # it may have appeared while we wrote
                fsync_tree(tmp)
                _move_into_place(tmp, path)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` (allowed by the caller) is moved away first and
    restored if the rename fails. Never replaces a ``path`` that appeared after it was moved away."""
    trash = path.parent / f".{path.name}.old-{os.getpid()}"
    moved = False
    if path.exists():
        path.rename(trash)
        moved = True
    try:
        rename_noreplace(tmp, path)
    except BaseException:
        if moved:
            with contextlib.suppress(OSError):
                rename_noreplace(trash, path)
        raise
    fsync_path(path.parent)
    if moved:
        shutil.rmtree(trash, ignore_errors=True)


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's ``renameat2`` (glibc 2.28+), or None (looked up once, on first use)."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        return ctypes.CDLL(None, use_errno=True).renameat2
    return None


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``, failing with ``CheckpointError`` if ``dst`` exists: atomically through
    ``renameat2(RENAME_NOREPLACE)``; where the system or file system lacks it, ``os.rename`` after
    checking that ``dst`` does not exist (race-free among writers holding ``output_lock``)."""
    renameat2 = _renameat2()
    if renameat2 is not None:
        if renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise CheckpointError(f"{dst}: appeared while this run was writing it; not replaced")
        if code not in (errno.EINVAL, errno.ENOSYS):  # EINVAL/ENOSYS: the file system lacks the flag
            raise OSError(code, os.strerror(code), str(dst))
    if os.path.lexists(dst):
        raise CheckpointError(f"{dst}: appeared while this run was writing it; not replaced")
    os.rename(src, dst)


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
