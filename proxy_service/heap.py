"""glibc's heap in the proxy process: freed memory goes back to the system every second.

DuckDB's C++ objects (appends, folds, checkpoints, query plans) and Python's larger objects live in glibc's heaps.
glibc returns only the free memory at the very top of a heap; what the writer frees in the middle of one between
two appends stays resident and is taken again a moment later. Measured under the memory bench's soak: 12-20 MB of
free chunks resident at any time, ~15 MB less steady RSS with `malloc_trim(0)` every second (README, "Memory").
Elsewhere (musl, macOS) there is no `malloc_trim` and nothing is scheduled.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_TICK_S = 1.0


def trimmer() -> Callable[[], None] | None:
    """`malloc_trim(0)` when the C library has it (glibc), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    fn = getattr(libc, "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> None:
        fn(0)

    return trim
