"""Memory the proxy process gives back to the system: glibc's free heap memory every second, and the pages of
DuckDB's library it does not use every minute.

glibc's heaps. DuckDB's C++ objects (appends, folds, checkpoints, query plans) and Python's larger objects live
there. glibc returns only the free memory at the very top of a heap; what the writer frees in the middle of one
between two appends stays resident and is taken again a moment later; `malloc_trim(0)` every second gives it back
(how much, under the soak: bench/memory.py).
Elsewhere (musl, macOS) there is no `malloc_trim` and nothing is scheduled.

DuckDB's library. The process maps DuckDB's large extension module, and loading it (symbol tables, relocations, the
registration of every built-in function) touches most of it, which then stays resident though the proxy's steady
work (appends, folds, checkpoints, the admin's queries) runs in a fraction of it. `madvise(MADV_PAGEOUT)` (Linux 5.4+)
over the library's read-only mappings asks the kernel to reclaim those pages now: clean file pages are simply
dropped (the memory is free again, not just unmapped), and a page DuckDB needs later is read back from the file by
the thread that touches it, a major page fault. The threads that run DuckDB (the writer, readers, its workers) run
that code, not the event loop. bench/memory.py reports the library's resident pages and the major faults.
Writable mappings are left alone; MADV_PAGEOUT never discards data (dirty or anonymous pages would go to swap).
The same holds for the Arrow and numpy libraries where a proxy loads them (`ARROW_LIBRARIES`: a cluster replica's
writer journals in Arrow; an embedded proxy never loads them): reclaimed with DuckDB's once they are loaded.

glibc's arenas. Every thread that allocates gets an arena of its own, up to eight per core, and each keeps its
free memory; the reads' worker threads, the writer and DuckDB's own threads would each hold one. `limit_arenas()`
caps them (`mallopt(M_ARENA_MAX)`, as `MALLOC_ARENA_MAX` would, which must be set before the process starts) before
any of those threads exists: more threads share an arena, which costs them a little lock contention, and the free
memory sits in fewer places for `malloc_trim` (bench/memory.py measures the RSS with the dashboard attached).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger("keyrack")

TRIM_TICK_S = 1.0
RECLAIM_TICK_S = 60.0
MADV_PAGEOUT = 21  # <linux/mman.h>
M_ARENA_MAX = -8  # <malloc.h>
ARENA_MAX = 2  # the event loop's thread keeps the main heap; the others share these
# Packages whose bundled libraries a cluster replica loads (its writer's Arrow journals) and whose pages are
# reclaimed like DuckDB's once they are imported (their wheels keep the libraries beside the package: `numpy.libs`).
ARROW_LIBRARIES = ("pyarrow", "numpy")
_READ_ONLY = ("r-xp", "r--p")  # private mappings the process never writes: code, read-only data, symbol tables


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def trimmer() -> Callable[[], None] | None:
    """`malloc_trim(0)` when the C library has it (glibc), else None."""
    libc = _libc()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> None:
        fn(0)

    return trim


def duckdb_library() -> str | None:
    """The path of DuckDB's extension module as this process mapped it, or None (not imported, or not a file)."""
    path = getattr(sys.modules.get("_duckdb"), "__file__", None)  # the extension module of the pinned DuckDB
    if isinstance(path, str) and path.endswith(".so"):
        return os.path.realpath(path)  # as /proc/self/maps names it (a venv may be reached through a symlink)
    return None


def limit_arenas(n: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas at `n` (before the process starts its threads); False where that is not glibc."""
    libc = _libc()
    fn = getattr(libc, "mallopt", None) if libc is not None else None
    if fn is None or getattr(libc, "malloc_trim", None) is None:  # mallopt's parameters are glibc's
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(M_ARENA_MAX, n))


def arrow_libraries(maps: str = "/proc/self/maps") -> list[str]:
    """The shared libraries this process mapped from the packages of ARROW_LIBRARIES that it has imported (none
    before an admin read loads them), as /proc/self/maps names them."""
    dirs = []
    for name in ARROW_LIBRARIES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str):
            pkg = os.path.dirname(os.path.realpath(path))
            dirs += [pkg + os.sep, pkg + ".libs" + os.sep]
    if not dirs:
        return []
    found: set[str] = set()
    with open(maps) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and ".so" in parts[5] and parts[5].startswith(tuple(dirs)):
                found.add(parts[5].rstrip("\n"))
    return sorted(found)


def read_only_ranges(path: str, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """The address ranges of `path`'s private read-only mappings in this process (/proc/self/maps)."""
    out = []
    with open(maps) as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].rstrip("\n") == path and parts[1] in _READ_ONLY:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                out.append((start, end))
    return out


def library_reclaimer(path: str | None = None) -> Callable[[], None] | None:
    """A function that asks the kernel to reclaim the resident pages of DuckDB's library (`path`, by default the
    module this process imported, and then also the Arrow and numpy libraries loaded by the time it runs), or None
    where that cannot work (no library, not Linux, no madvise)."""
    given = path is not None
    path = path or duckdb_library()
    libc = _libc()
    madvise = getattr(libc, "madvise", None) if libc is not None else None
    if path is None or madvise is None or not sys.platform.startswith("linux"):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    supported = True

    def reclaim() -> None:
        nonlocal supported
        if not supported:
            return
        libraries = [path] if given else [path, *arrow_libraries()]
        for start, end in (r for lib in libraries for r in read_only_ranges(lib)):
            if madvise(start, end - start, MADV_PAGEOUT) != 0:
                supported = False  # a kernel older than 5.4 (EINVAL): nothing to do, and no point in asking again
                log.info("library pages not reclaimed: madvise(MADV_PAGEOUT) failed, errno %d", ctypes.get_errno())
                return

    return reclaim
