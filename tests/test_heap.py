"""heap.py: the proxy gives glibc's free heap memory back every second."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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


def test_the_proxy_trims_its_heap_every_second(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    real = heap.trimmer()
    assert real is not None  # glibc here

    def counting() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(heap, "trimmer", lambda: counting)
    monkeypatch.setattr(heap, "TRIM_TICK_S", 0.05)
    settings = Settings(_env_file=None, data_dir=tmp_path, api_keys=POOL_KEYS)  # type: ignore[call-arg]
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        names = {t.get_name() for t in app.state.gateway._tasks}
        assert "malloc-trim" in names
        deadline = time.monotonic() + 20
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(calls) >= 3
