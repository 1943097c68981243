"""The I/O floor: read every safetensors byte of a folder once and write the same bytes once, with fsync.

Run as a script (``python floor.py SRC DST_DIR``) it prints JSON; it imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

CHUNK = 16 * 2**20  # of 256 KiB .. 64 MiB, 16 MiB was the fastest and steadiest here


def copy_floor(src: str | os.PathLike, dst_dir: str | os.PathLike, pattern: str = "*.safetensors") -> dict:
    """Copy ``src``'s ``pattern`` files into ``dst_dir`` (read once, write once, fsync each file)."""
    src, dst_dir = Path(src), Path(dst_dir)
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    files = sorted(src.glob(pattern))
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    read_s = write_s = 0.0
    for file in files:
        with open(file, "rb", buffering=0) as fin, open(dst_dir / file.name, "wb", buffering=0) as fout:
            while True:
                t0 = time.perf_counter()
                n = fin.readinto(buf)
                t1 = time.perf_counter()
                read_s += t1 - t0
                if not n:
                    break
                fout.write(view[:n])
                write_s += time.perf_counter() - t1
                total += n
            t2 = time.perf_counter()
            os.fsync(fout.fileno())
            write_s += time.perf_counter() - t2
    _fsync_dir(dst_dir)
    wall = time.perf_counter() - start
    shutil.rmtree(dst_dir, ignore_errors=True)
    return {"bytes": total, "wall_s": wall, "read_s": read_s, "write_s": write_s, "gb_s": total / 1e9 / wall}


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def kernel_copy(src: str | os.PathLike, dst_dir: str | os.PathLike) -> dict:
    """The same copy done inside the kernel (``sendfile``, no user-space buffer), with fsync: a lower bound."""
    src, dst_dir = Path(src), Path(dst_dir)
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    total = 0
    start = time.perf_counter()
    for file in sorted(src.glob("*.safetensors")):
        with open(file, "rb") as fin, open(dst_dir / file.name, "wb") as fout:
            size = os.fstat(fin.fileno()).st_size
            offset = 0
            while offset < size:
                sent = os.sendfile(fout.fileno(), fin.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
            total += offset
            os.fsync(fout.fileno())
    _fsync_dir(dst_dir)
    wall = time.perf_counter() - start
    shutil.rmtree(dst_dir, ignore_errors=True)
    return {"bytes": total, "wall_s": wall, "gb_s": total / 1e9 / wall}


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    print(json.dumps({"floor": copy_floor(src, dst), "kernel_copy": kernel_copy(src, dst)}))
