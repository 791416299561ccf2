"""Keep freed heap memory for reuse instead of handing it back to the OS at once.

With glibc's defaults a serving process returns memory to the OS as soon as
a large request's buffers are freed (allocations over a dynamic threshold
are ``mmap``-ed and unmapped on free; the top of the heap is trimmed past
twice that threshold). The next large request then touches fresh pages
again, and on a VM every page fault is expensive: for 10,000-row requests
(0.8 MB in, 0.2 MB out) the server spent more time page-faulting copies of
the request than running the model, and keeping the memory doubled its
rows/s (docs/serving.md, "Memory allocator"). Model servers often swap in
tcmalloc or jemalloc for the same reason; two ``mallopt`` calls get most of
it without another dependency.

Nothing happens off glibc, with a keep of 0, or when the operator set any
``MALLOC_*_`` tunable in the environment (theirs wins).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("highpeaks_ml.server")

#: mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above this (HEAP_MAX_SIZE / 2 on 64-bit).
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: Environment tunables that show the operator chose the allocator's behaviour.
ENV_TUNABLES = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)


def keep_freed_memory(keep_bytes: int) -> str:
    """Make glibc keep up to ``keep_bytes`` of freed memory; say what was done.

    Blocks up to ``min(keep_bytes, 32 MiB)`` come from the heap instead of
    their own mappings, and the heap is trimmed only once more than
    ``keep_bytes`` at its top is free. Returns a short phrase for the log.
    """
    if keep_bytes <= 0:
        return "off (C library defaults)"
    chosen = [k for k in ENV_TUNABLES if k in os.environ]
    if chosen:
        return f"left to the environment ({', '.join(chosen)})"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc: C library defaults"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "mallopt unavailable: C library defaults"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_threshold = min(keep_bytes, MMAP_THRESHOLD_MAX)
    trim_threshold = min(keep_bytes, 2**31 - 1)
    set_mmap = mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    if not (set_mmap and mallopt(M_TRIM_THRESHOLD, trim_threshold)):
        return "mallopt refused: C library defaults"
    return f"keeps up to {keep_bytes // (1024 * 1024)} MiB of freed memory"
