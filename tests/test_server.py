"""`keyrack serve`'s process keeps pandas out: the proxy never uses it, yet DuckDB's parameter binding and pyarrow's
array building would import it (~33 MB of RSS) when it is installed for the dashboard."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def probe(tmp_path: Path, code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter on this checkout with only `env` set; the last line it printed."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def serve_env(tmp_path: Path, fill: str) -> dict[str, str]:
    """A proxy's settings: a data dir of its own, one key, an upstream that refuses connections."""
    return {
        "KEYRACK_DATA_DIR": str(tmp_path / "data"),
        "KEYRACK_API_KEYS": "p1:AIza" + fill * 35,
        "KEYRACK_UPSTREAM_URL": "http://127.0.0.1:9",
    }


PROBE = """
import sys
from proxy_service.server import without_pandas
without_pandas()
from starlette.testclient import TestClient
from proxy_service.app import create_app
from proxy_service.settings import Settings
app = create_app(Settings())
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
    auth = {"authorization": "Bearer admin-token-for-the-probe"}
    for path in ("/admin/api/keys", "/admin/api/stats/summary", "/admin/api/stats/series?format=arrow"):
        r = client.get(path, headers=auth)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    r = client.post("/admin/api/query", json={"sql": "SELECT count(*) AS n FROM requests", "format": "json"}, headers=auth)
    assert r.status_code == 200, r.text[:300]
try:
    import pandas
except ModuleNotFoundError:
    print("pandas absent", "pandas" in sys.modules)
"""

# httpx imports its command-line client, and with it rich and pygments (~4 MB), whenever they are installed; the
# proxy's import path keeps it out and httpx itself still works (its `main` is httpx's own stub).
CLI_PROBE = """
import sys
from proxy_service.server import without_pandas
without_pandas()
import proxy_service.app
import httpx
assert httpx.Client and callable(httpx.main)
print("loaded:", sorted(m for m in ("httpx._main", "rich", "pygments") if m in sys.modules))
"""


def test_the_proxy_leaves_httpx_command_line_client_out(tmp_path: Path) -> None:
    # Only meaningful where rich and pygments are installed (the dev extras: memray needs rich), else httpx skips it.
    import importlib.util

    assert importlib.util.find_spec("rich") and importlib.util.find_spec("pygments")
    assert probe(tmp_path, CLI_PROBE) == "loaded: []"
    # Without the finder the same imports do load it here: the probe above proves the finder, not an absent package.
    assert probe(tmp_path, CLI_PROBE.replace("without_pandas()", "")) == "loaded: ['httpx._main', 'pygments', 'rich']"


def test_the_proxy_runs_its_storage_and_admin_api_without_pandas(tmp_path: Path) -> None:
    env = {**serve_env(tmp_path, "A"), "KEYRACK_ADMIN_TOKEN": "admin-token-for-the-probe"}
    assert probe(tmp_path, PROBE, **env) == "pandas absent False"


# What `keyrack serve` imports, then what its steady state runs: proxied calls (here refused by the closed upstream
# port: request, attempt and error rows), the writer's appends, the rollup fold, key persistence and the forecast's
# first refresh. None of it may load pyarrow, numpy or pandas (~50 MB of RSS): only admin endpoints that answer in
# Arrow or fit forecasts load them, on first use.
STEADY_PROBE = """
import asyncio, sys
HEAVY = ("pyarrow", "numpy", "pandas")
import proxy_service.cli, proxy_service.server, proxy_service.app
assert not [m for m in HEAVY if m in sys.modules], [m for m in HEAVY if m in sys.modules]
from proxy_service.server import without_pandas
without_pandas()
from starlette.testclient import TestClient
from proxy_service.admin import forecast
from proxy_service.app import create_app
from proxy_service.settings import Settings
app = create_app(Settings())
gw = app.state.gateway
with TestClient(app, base_url="http://127.0.0.1") as client:
    for _ in range(3):
        r = client.post("/v1beta/models/gemini-2.5-flash:generateContent", json={"contents": []})
        assert r.status_code >= 500, r.status_code
    gw.persist_keys()
    gw.writer.flush()
    gw.writer.submit(gw.rollup.fold).result(30)
    asyncio.run(gw.forecast.refresh(forecast._reader(gw)))
    n = gw.writer.submit(lambda cur: cur.execute("SELECT count(*) FROM requests").fetchone()[0]).result(30)
    assert n == 3, n
print("loaded:", [m for m in HEAVY if m in sys.modules])
"""


def test_serve_and_its_steady_state_load_no_pyarrow_numpy_or_pandas(tmp_path: Path) -> None:
    assert probe(tmp_path, STEADY_PROBE, **serve_env(tmp_path, "B")) == "loaded: []"


# `keyrack serve` as far as uvicorn's run (which is replaced by a read of DuckDB's allocator options): the decay that
# kept freed pages in RSS is off, unless the operator chose their own.
DECAY_PROBE = """
import ctypes, sys
import uvicorn
def read_decay(self, sockets=None):
    import pyarrow  # what a cluster replica's journals load: its buffers in glibc's heaps, which are trimmed
    assert pyarrow.default_memory_pool().backend_name == "system", pyarrow.default_memory_pool().backend_name
    import _duckdb
    lib = ctypes.CDLL(_duckdb.__file__)
    out = []
    for name in (b"opt.dirty_decay_ms", b"opt.muzzy_decay_ms"):
        value, size = ctypes.c_ssize_t(-2), ctypes.c_size_t(ctypes.sizeof(ctypes.c_ssize_t))
        assert lib.duckdb_je_mallctl(name, ctypes.byref(value), ctypes.byref(size), None, 0) == 0, name
        out.append(value.value)
    print("decay:", *out)
    self.started = True
uvicorn.Server.run = read_decay
from proxy_service.cli import main
sys.argv = ["keyrack", "serve", "--port", "0"]
main()
"""


@pytest.mark.parametrize(
    ("operator", "expected"), [(None, "decay: 0 0"), ("dirty_decay_ms:1000,muzzy_decay_ms:2000", "decay: 1000 2000")]
)
def test_serve_returns_duckdbs_freed_memory_at_once(tmp_path: Path, operator: str | None, expected: str) -> None:
    import _duckdb

    if not hasattr(ctypes.CDLL(_duckdb.__file__), "duckdb_je_mallctl"):
        pytest.skip("this DuckDB build has no jemalloc (Linux x86_64 wheels have)")
    env = {**serve_env(tmp_path, "C"), **({"DUCKDB_JE_MALLOC_CONF": operator} if operator else {})}
    assert probe(tmp_path, DECAY_PROBE, **env) == expected


# What the dashboard's pages read (Monitor and Trends poll them), each admin read that answers in Arrow in both
# formats, and the query API in both: (method, path, query parameters or JSON body, answer format).
EXPLORE = {"measures": ["calls", "p50_latency_ms", "p95_latency_ms"], "dimensions": ["model", "day"], "top_n": 5}
BACKTEST = {"name": "bt", "metric": "p95_latency_ms", "op": ">", "threshold": 1, "window_s": 900, "for_s": 900}
ADMIN_READS: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/admin/api/keys", {}, "json"),
    ("GET", "/admin/api/config", {}, "json"),
    ("GET", "/admin/api/alerts/active", {}, "json"),
    ("GET", "/admin/api/stats/summary", {}, "json"),
    ("GET", "/admin/api/stats/series", {"granularity": "hour", "group_by": "model"}, "json"),
    ("GET", "/admin/api/stats/series", {"granularity": "hour", "group_by": "model", "format": "arrow"}, "arrow"),
    ("GET", "/admin/api/stats/series", {"granularity": "day", "group_by": "key", "format": "arrow"}, "arrow"),
    ("GET", "/admin/api/stats/top", {"dim": "key"}, "json"),
    ("GET", "/admin/api/stats/top", {"dim": "model", "format": "arrow"}, "arrow"),
    ("GET", "/admin/api/stats/outcomes", {"granularity": "hour"}, "arrow"),
    ("GET", "/admin/api/pool/headroom", {"hours": 24}, "json"),
    ("GET", "/admin/api/clients", {}, "json"),
    ("GET", "/admin/api/errors/facets", {}, "json"),
    ("GET", "/admin/api/forecast/quota", {}, "json"),
    ("POST", "/admin/api/explore", EXPLORE, "json"),
    ("POST", "/admin/api/explore", {**EXPLORE, "format": "arrow"}, "arrow"),
    ("POST", "/admin/api/alerts/backtest", BACKTEST, "json"),
    ("POST", "/admin/api/query", {"sql": "SELECT model, count(*) AS n FROM requests GROUP BY 1"}, "arrow"),
    ("POST", "/admin/api/query", {"sql": "SELECT model, ts FROM requests LIMIT 5", "format": "json"}, "json"),
]


def test_a_running_proxy_serves_stores_and_answers_the_dashboard_without_arrow_numpy_or_pandas(
    tmp_path: Path,
) -> None:
    """The decision (docs/ARCHITECTURE.md, "Memory": pyarrow stays out of the proxy process, admin reads included) on
    a real `keyrack serve` process, read from outside through /proc/<pid>/maps (no debug hook in the product):
    proxied calls, their rows appended and folded, the keys persisted, and every admin read a dashboard polls, each
    Arrow answer in both formats and the query API in both, map none of Arrow's, numpy's or pandas' libraries. The
    Arrow answers are real Arrow streams (read here with pyarrow) with the JSON answers' rows."""
    import httpx
    import pyarrow as pa

    from bench.common import ADMIN_TOKEN, NO_LIMITS, closed_loop, generate_path, start_fake, start_proxy, wait_ready
    from bench.memory import POOL_KEYS

    fake = start_fake(tmp_path)
    proxy = start_proxy(tmp_path, fake.url, POOL_KEYS, model_limits=NO_LIMITS)
    try:
        wait_ready([fake, proxy], timeout=120)
        served = closed_loop(proxy.url + generate_path(), concurrency=4, duration=2)
        assert served.responses > 0 and not served.errors
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        deadline = time.monotonic() + 60  # the writer appends within its flush interval: wait for every row
        while time.monotonic() < deadline and written_requests(proxy.url) < served.responses:
            time.sleep(0.2)
        assert written_requests(proxy.url) >= served.responses
        answers: dict[tuple[str, str], Any] = {}
        for method, path, args, fmt in ADMIN_READS:
            kw: dict[str, Any] = {"json": args} if method == "POST" else {"params": args}
            r = httpx.request(method, proxy.url + path, headers=auth, timeout=120, **kw)
            assert r.status_code == 200, (path, args, r.text)
            if fmt == "arrow":
                assert r.headers["content-type"] == "application/vnd.apache.arrow.stream", path
                answers[path, fmt] = pa.ipc.open_stream(r.content).read_all()
            else:
                answers[path, fmt] = r.json()
        calls = sum(answers["/admin/api/query", "arrow"].column("n").to_pylist())
        assert calls == served.responses
        assert sum(answers["/admin/api/stats/outcomes", "arrow"].column("n").to_pylist()) >= 2 * calls
        series = answers["/admin/api/stats/series", "json"]["rows"]
        assert sum(r["calls"] for r in series) == calls and all(r["p95_latency_ms"] for r in series)
        explored = answers["/admin/api/explore", "arrow"]
        assert sum(explored.column("calls").to_pylist()) == calls and explored.column("p95_latency_ms").null_count == 0
        assert explored.num_rows == len(answers["/admin/api/explore", "json"]["rows"])
        mapped = Path(f"/proc/{proxy.proc.pid}/maps").read_text()
        assert not [lib for lib in ("/libarrow.so", "/numpy", "/pandas/") if lib in mapped]
    finally:
        proxy.stop()
        fake.stop()


def written_requests(url: str) -> float:
    """`requests` rows the proxy's writer has appended (its /metrics)."""
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith('keyrack_events_written_total{table="requests"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
