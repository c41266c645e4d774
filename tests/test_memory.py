"""drasyl.memory: the mmap threshold can be pinned where the C library is glibc."""

from __future__ import annotations

import platform

from drasyl.memory import fix_mmap_threshold


def test_mmap_threshold_is_pinned_on_glibc() -> None:
    assert fix_mmap_threshold() is (platform.libc_ver()[0] == "glibc")
