"""The process's allocator: keep XLA's large CPU buffers in glibc's heap."""
from __future__ import annotations

import ctypes
import os
import sys


def keep_large_buffers_in_heap() -> None:
    """Stop glibc from returning freed blocks over 32 MiB to the OS.

    XLA on CPU allocates its large per-call buffers (solver history, activations) afresh
    on every call; above glibc's mmap threshold each one is page-faulted again, which
    can cost more than the solve itself (see `deqdist bench solvers` with and without
    DEQDIST_SYSTEM_MALLOC=1). TCMalloc-style reuse is the usual fix; this is the
    no-dependency version.
    Only this process is affected; DEQDIST_SYSTEM_MALLOC=1 opts out.
    """
    if not sys.platform.startswith("linux") or os.environ.get("DEQDIST_SYSTEM_MALLOC"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)
