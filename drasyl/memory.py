"""Keep large, short-lived buffers out of the heap, so they do not stay in RSS once freed.

glibc serves allocations above its mmap threshold with their own mappings, returned to the
kernel on free; but after such a block is freed it raises the threshold (up to 32 MiB), and
the next multi-MB buffers come from the heap, where they stay resident. A super peer's
/metrics scrape writes ~2.4 kB per peer (48 MB for 20 000 peers): with the dynamic threshold
RSS grew from 45 to 81 MiB over a few scrapes; with the threshold fixed it stays within
5 MiB of where it started (bench/README.md). Setting the threshold explicitly turns the
dynamic adjustment off. Per-packet buffers are far below it and unaffected.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value


def fix_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold at 128 KiB; False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
