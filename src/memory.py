"""Process memory of long jobs: freed tensor memory goes back to the system.

glibc's malloc serves blocks of 128 KiB and more with mmap, but it raises that threshold to the size of each
such block freed (up to 32 MiB), so the frame-sized buffers of a video loop soon come from the heap. Freed there,
they fragment it and are kept: streaming a video at 512 with SR, the resident memory swung between 0.9 and 1.4 GB
and its peak grew with the video's length (BENCHMARKS.md, streaming). Fixing the threshold at its default keeps
those buffers on mmap, returned when freed (0.68 to 0.81 GB over the same frames).
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's default; setting it explicitly turns its growth off


def return_freed_buffers() -> bool:
    """Keep blocks of MMAP_THRESHOLD bytes and more on mmap for the rest of the process (glibc); whether it took."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return bool(libc is not None and hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except OSError:  # not glibc (macOS, musl): their allocators behave otherwise, nothing to set
        return False
