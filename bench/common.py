"""What the benchmarks share: servers as subprocesses, a Python load generator, percentiles, table printing.

The servers (fake upstream, proxy) always run in their own processes; the load generator runs in the benchmark's
process. On a 2-core machine one GIL for both sides would measure the GIL, not the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import free_port as free_port  # one copy for tests and bench (bench.common re-exports it)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
MODEL = "gemini-2.5-flash"
CLIENT_TOKEN = "bench-client-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"
GENERATE_BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": "Say hello in one sentence."}]}]}).encode()
# The proxy's built-in free-tier table knows gemini-2.5-flash (rpm 10): unset it where the bench wants no limit.
NO_LIMITS = json.dumps({MODEL: {"rpm": None, "rpd": None, "tpm": None}})
# Every client limit set, none reached in a bench run: each call checks them all (bench.clients, proxy_throughput).
CLIENT_LIMITS = {
    "rpm": 10**7,
    "rpd": 10**9,
    "tpd": 10**11,
    "calls_per_month": 10**10,
    "tokens_per_month": 10**12,
    "concurrency": 10_000,
}


def generate_path(model: str = MODEL) -> str:
    return f"/v1beta/models/{model}:generateContent"


# ------------------------------------------------------------------------------------------------ servers


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path | None = None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully: the proxy's lifespan flushes its events), then wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYRACK_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _spawn(name: str, args: list[str], workdir: Path, env: dict[str, str], url: str) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        # cwd = workdir: the proxy's Settings read `.env` from the working directory; keep the repo's out of it.
        proc = subprocess.Popen(args, cwd=workdir, env=_clean_env(env), stdout=log, stderr=subprocess.STDOUT)
    return Server(name, url, proc, log_path)


def start_fake(workdir: Path, scenario: dict[str, Any] | None = None, name: str = "fake") -> Server:
    port = free_port()
    args = [sys.executable, "-m", "proxy_service.cli", "fake-upstream", "--host", HOST, "--port", str(port)]
    if scenario is not None:
        path = workdir / f"{name}-scenario.json"
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scenario))
        args += ["--scenario", str(path)]
    return _spawn(name, args, workdir, {}, f"http://{HOST}:{port}")


def start_proxy(
    workdir: Path,
    upstream_url: str,
    api_keys: str,
    *,
    strategy: str = "quota_aware",
    model_limits: str | None = None,
    env: dict[str, str] | None = None,
    name: str = "proxy",
    module: str = "proxy_service.cli",
    checkout: Path | None = None,
) -> Server:
    """`keyrack serve` (or `module`, which must accept the same `serve --port N` arguments) on a fresh data dir;
    from another Keyrack `checkout` (its own `.venv`, its own code) when given."""
    port = free_port()
    data_dir = workdir / f"{name}-data"
    settings = {
        "KEYRACK_HOST": HOST,
        "KEYRACK_PORT": str(port),
        "KEYRACK_UPSTREAM_URL": upstream_url,
        "KEYRACK_API_KEYS": api_keys,
        "KEYRACK_ACCESS_TOKENS": CLIENT_TOKEN,
        "KEYRACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "KEYRACK_DATA_DIR": str(data_dir),
        "KEYRACK_STRATEGY": strategy,
        "KEYRACK_SNAPSHOT_INTERVAL_S": "0",
        **({"KEYRACK_MODEL_LIMITS": model_limits} if model_limits is not None else {}),
        **(env or {}),
    }
    python = sys.executable
    if checkout is not None:
        python = str(checkout / ".venv" / "bin" / "python")
        settings["PYTHONPATH"] = str(checkout)
    args = [python, "-m", module, "serve", "--port", str(port)]
    server = _spawn(name, args, workdir, settings, f"http://{HOST}:{port}")
    server.data_dir = data_dir
    return server


def wait_ready(servers: Iterable[Server], timeout: float = 60.0) -> None:
    """Poll every server until it answers HTTP (any status); raise with its log if it dies or never answers."""
    pending = list(servers)
    deadline = time.monotonic() + timeout
    while pending:
        for s in list(pending):
            if s.proc.poll() is not None:
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.log_tail()}")
            try:
                with socket.create_connection((HOST, int(s.url.rsplit(":", 1)[1])), timeout=0.5) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    if sock.recv(12).startswith(b"HTTP/1.1"):
                        pending.remove(s)
            except OSError:
                pass
        if pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pending[0].name} did not start in {timeout}s:\n{pending[0].log_tail()}")
            time.sleep(0.1)


def stop_all(servers: Iterable[Server], timeout: float = 30.0) -> None:
    """SIGTERM every server first, then wait for each: shutdowns overlap instead of adding up."""
    servers = list(servers)
    for s in servers:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    for s in servers:
        s.stop(timeout)


@contextlib.contextmanager
def running(*servers: Server) -> Any:
    """Stop (SIGTERM) every server on the way out, whatever happened."""
    try:
        yield servers
    finally:
        for s in servers:
            s.stop()


def count_rows(db_path: Path, sql: str) -> Any:
    """Read the proxy's DuckDB file once the proxy has stopped (it is the file's only owner while it runs)."""
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def http_json(url: str, method: str = "GET", timeout: float = 10.0) -> Any:
    import urllib.request

    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


# ------------------------------------------------------------------------------------------------ statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class LoadResult:
    """What a closed-loop run saw from the client side. Latencies in milliseconds."""

    target: str
    concurrency: int
    elapsed_s: float = 0.0
    responses: int = 0  # answers received, any status
    failures: int = 0  # no answer (connection error, timeout)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def errors(self) -> int:
        return self.responses - self.ok + self.failures

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> dict[str, Any]:
        self.latencies_ms.sort()
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "requests": self.responses + self.failures,
            "ok": self.ok,
            "errors": self.errors,
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 3),
            "p95_ms": round(self.pct(95), 3),
            "p99_ms": round(self.pct(99), 3),
            "elapsed_s": round(self.elapsed_s, 2),
        }


class _HttpConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends prebuilt request bytes and parses answers with httptools.

    A few µs of client CPU per request instead of aiohttp's ~0.5 ms: on 2 cores every client cycle is taken from
    the server under test.
    """

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # malformed answer: fail the request, drop the connection
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())
        if not self.parser.should_keep_alive():
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future[int]:
        """Write one request; the future gets the answer's status code once the whole answer is read."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


def _request_bytes(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return parts.hostname or HOST, parts.port or 80, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _closed_loop(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    max_requests: int,
    timeout: float,
) -> LoadResult:
    result = LoadResult(url, concurrency)
    host, port, data = _request_bytes(url, body, headers)
    loop = asyncio.get_running_loop()
    issued = 0
    start = time.perf_counter()
    deadline = start + duration

    async def worker() -> None:
        nonlocal issued
        lat, statuses = result.latencies_ms, result.statuses
        conn: _HttpConn | None = None
        try:
            while issued < max_requests and time.perf_counter() < deadline:
                issued += 1
                t0 = time.perf_counter()
                try:
                    if conn is None or conn.closed:
                        _tr, conn = await asyncio.wait_for(loop.create_connection(_HttpConn, host, port), timeout)
                    status = await asyncio.wait_for(conn.send(data), timeout)
                except (OSError, TimeoutError, ValueError):
                    result.failures += 1
                    if conn is not None and conn.transport is not None:
                        conn.transport.close()
                    conn = None
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
                statuses[status] += 1
                result.responses += 1
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result


def closed_loop(
    url: str,
    *,
    concurrency: int,
    duration: float,
    body: bytes = GENERATE_BODY,
    headers: dict[str, str] | None = None,
    max_requests: int = 1_000_000,
    timeout: float = 30.0,
) -> LoadResult:
    """`concurrency` workers, each on its own keep-alive connection, sending the next request when the previous
    answer is in, for `duration` seconds or `max_requests` requests in all, whichever comes first. Requests in
    flight at the deadline are awaited (so every request sent is either answered or counted as a failure)."""
    hdrs = {"content-type": "application/json", "x-goog-api-key": CLIENT_TOKEN, **(headers or {})}
    return run_async(_closed_loop(url, body, hdrs, concurrency, duration, max_requests, timeout))


def side_by_side(
    urls: Sequence[str], *, concurrency: int, duration: float, tokens: Sequence[str] | None = None
) -> list[LoadResult]:
    """`closed_loop` against each of `urls` at the same time (one event loop, `concurrency` workers each): every
    target sees the same machine at the same moment, so a load spike from elsewhere moves them alike. `tokens`: the
    client token for each url (default: the bench's one)."""
    tokens = tokens or [CLIENT_TOKEN] * len(urls)

    async def both() -> list[LoadResult]:
        runs = [
            _closed_loop(
                u,
                GENERATE_BODY,
                {"content-type": "application/json", "x-goog-api-key": t},
                concurrency,
                duration,
                1_000_000,
                30.0,
            )
            for u, t in zip(urls, tokens, strict=True)
        ]
        return list(await asyncio.gather(*runs))

    results: list[LoadResult] = run_async(both())
    return results


def run_async(coro: Any) -> Any:
    """asyncio.run on uvloop when installed (the client should cost as little CPU as possible)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


# ------------------------------------------------------------------------------------------------ output


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_average() -> float:
    """The 1-minute load average (0 where unknown): on a shared 2-core machine, read every figure with it."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return 0.0


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
