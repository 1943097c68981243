"""Give freed large buffers back to the operating system at once (streaming conversion)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 20


@functools.cache
def release_large_frees() -> bool:
    """Serve allocations of 1 MiB and more with their own mappings, unmapped when freed (glibc).

    glibc raises its mmap threshold to the size of each mapped block freed (up to 32 MiB), after
    which tensors of that size come from the heap and stay resident when freed: a streaming
    conversion that frees every tensor once written then grows by tens of MB of dead heap. Fixing
    the threshold keeps the resident set at what is alive. Returns False where it does not apply.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False
