"""heap.py: the proxy gives glibc's free heap memory back every second, and DuckDB's unused library pages every
minute."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from proxy_service import heap
from proxy_service.app import create_app
from proxy_service.settings import Settings
from tests.conftest import POOL_KEYS

REPO = Path(__file__).resolve().parents[1]

# In a fresh interpreter: 200 MB of 4 KB blocks (below glibc's mmap threshold: they live in the heap), all freed but
# the last, so the free memory sits below a used block and glibc's own trimming of the heap's top cannot return it.
PROBE = """
import ctypes, sys
from proxy_service import heap
def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(4000) for _ in range(50_000)]
for b in blocks:
    ctypes.memset(b, 1, 4000)
for b in blocks[:-1]:
    libc.free(b)
before = anon_mb()
heap.trimmer()()
print(round(before - anon_mb()))
"""


def test_trim_gives_freed_heap_memory_back() -> None:
    res = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"}
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) > 150  # of ~190 MB freed


# In a fresh interpreter: DuckDB's library after loading and one query, after the reclaim, and after the next query
# (which must work: the pages it needs are read back from the file). The library is a copy that no other process
# maps (this test process has loaded DuckDB, and the kernel keeps a page that two processes map).
RECLAIM_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import duckdb
from proxy_service import heap
path = heap.duckdb_library()
def library_mb():
    kb, name = 0, ""
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            name = head[5] if len(head) > 5 else ""
        elif head[0] == "Rss:" and name == path:
            kb += int(head[1])
    return kb / 1024
con = duckdb.connect()
assert con.execute("SELECT sum(range) FROM range(100000)").fetchone()[0] == 4999950000
loaded = library_mb()
heap.library_reclaimer()()
reclaimed = library_mb()
assert con.execute("SELECT count(DISTINCT range % 7) FROM range(100000)").fetchone()[0] == 7
assert path.startswith(sys.argv[1]), path
print(round(loaded, 1), round(reclaimed, 1), round(library_mb(), 1))
"""


def test_reclaim_drops_duckdbs_library_pages_and_duckdb_still_works(tmp_path: Path) -> None:
    library = heap.duckdb_library()
    assert library is not None and heap.library_reclaimer() is not None  # Linux, glibc, DuckDB loaded here
    shutil.copy(library, tmp_path / Path(library).name)
    res = subprocess.run(
        [sys.executable, "-c", RECLAIM_PROBE, str(tmp_path.resolve())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin"},
    )
    assert res.returncode == 0, res.stderr[-2000:]
    loaded, reclaimed, used_again = map(float, res.stdout.split()[-3:])
    assert loaded > 15  # MB of the library resident after loading it and one query
    assert reclaimed < loaded / 4
    assert 0 < used_again < loaded  # what the next query needed came back, not the rest


def test_only_the_librarys_read_only_mappings_are_named(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    lib = "/venv/lib/_duckdb.so"
    maps.write_text(
        f"7f0000000000-7f0000200000 r--p 00000000 08:01 1 {lib}\n"
        f"7f0000200000-7f0000a00000 r-xp 00200000 08:01 1 {lib}\n"
        f"7f0000a00000-7f0000a10000 rw-p 00a00000 08:01 1 {lib}\n"  # written data: never touched
        f"7f0000a10000-7f0000a20000 r--p 00000000 08:01 2 {lib}.other\n"
        "7f0000a20000-7f0000a30000 rw-p 00000000 00:00 0 \n"
    )
    assert heap.read_only_ranges(lib, str(maps)) == [
        (0x7F0000000000, 0x7F0000200000),
        (0x7F0000200000, 0x7F0000A00000),
    ]


@pytest.mark.parametrize(
    ("factory", "tick", "task"),
    [("trimmer", "TRIM_TICK_S", "malloc-trim"), ("library_reclaimer", "RECLAIM_TICK_S", "library-pageout")],
)
def test_the_proxy_schedules_the_job(tmp_path: Path, monkeypatch, factory: str, tick: str, task: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = getattr(heap, factory)()
    assert real is not None  # glibc and Linux here

    def counting() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(heap, factory, lambda: counting)
    monkeypatch.setattr(heap, tick, 0.05)
    settings = Settings(_env_file=None, data_dir=tmp_path, api_keys=POOL_KEYS)  # type: ignore[call-arg]
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        names = set(app.state.gateway.jobs.names)
        assert task in names
        deadline = time.monotonic() + 20
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200  # and the proxy still answers
    assert len(calls) >= 3


def test_the_reclaim_covers_arrows_libraries_once_an_admin_read_loaded_them(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The pages themselves: a library that another process maps too (the dashboard's pyarrow, this test's) keeps
    # its shared pages, so the effect is measured by bench/memory.py on a real proxy; here, what is asked for.
    import pyarrow  # noqa: F401  (as an admin read in Arrow loads it)

    asked: list[str] = []
    monkeypatch.setattr(heap, "read_only_ranges", lambda path, maps="/proc/self/maps": asked.append(path) or [])
    reclaim = heap.library_reclaimer()
    assert reclaim is not None
    reclaim()
    assert asked[0] == heap.duckdb_library()
    assert any("/libarrow.so" in p for p in asked) and any("numpy" in p for p in asked), asked
    asked.clear()
    heap.library_reclaimer(heap.duckdb_library())()  # a library named by the caller: that one only
    assert asked == [heap.duckdb_library()]


def test_arrow_libraries_are_the_mapped_shared_libraries_of_loaded_packages(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import numpy
    import pyarrow

    pa_dir, np_dir = Path(pyarrow.__file__).resolve().parent, Path(numpy.__file__).resolve().parent
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000200000 r--p 00000000 08:01 1 {pa_dir}/libarrow.so.2600\n"
        f"7f0000200000-7f0000a00000 r-xp 00200000 08:01 1 {pa_dir}/libarrow.so.2600\n"
        f"7f0000a00000-7f0000a10000 r--p 00000000 08:01 2 {np_dir}.libs/libscipy_openblas64_.so\n"
        f"7f0000a10000-7f0000a20000 r--p 00000000 08:01 3 {pa_dir}/include/arrow/api.h\n"  # not a library
        "7f0000a20000-7f0000a30000 r--p 00000000 08:01 4 /usr/lib/libarrow.so.2600\n"  # not the wheel's
    )
    assert heap.arrow_libraries(str(maps)) == [f"{np_dir}.libs/libscipy_openblas64_.so", f"{pa_dir}/libarrow.so.2600"]
    monkeypatch.setattr(heap, "ARROW_LIBRARIES", ())
    assert heap.arrow_libraries(str(maps)) == []


def test_malloc_arenas_can_be_capped() -> None:
    # mallopt answers 1 when glibc took the value; the proxy calls it before its threads start (server.py).
    assert heap.limit_arenas() is True
