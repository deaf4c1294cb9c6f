"""Shared fixtures: real servers on 127.0.0.1 — the fake Gemini upstream and the Keyrack proxy — on a real DuckDB
file in a temporary directory."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.settings import Settings
from tests.servers import serve

ADMIN_TOKEN = "admin-secret-token-123"
CLIENT_TOKEN = "client-token-abc"


def fake_key(name: str) -> str:
    """A deterministic fake key shaped like a real Gemini key ("AIza" + 35 characters), named for readability:
    Keyrack rejects text that cannot be a key, so tests use keys of the real shape."""
    return "AIza" + hashlib.sha256(name.encode()).hexdigest()[:35]


# The standard pool used by most tests: three projects, one invalid key.
P1_A, P1_B, P2_A, P3_A = (fake_key(n) for n in ("key-p1-a", "key-p1-b", "key-p2-a", "key-p3-a"))
BAD_1 = fake_key("key-bad-1")
SCENARIO: dict[str, Any] = {
    "projects": {"p1": [P1_A, P1_B], "p2": [P2_A], "p3": [P3_A]},
    "invalid_keys": [BAD_1],
    "seed": 1,
}
POOL_KEYS = ",".join(f"{p}:{k}" for p, keys in SCENARIO["projects"].items() for k in keys)


@dataclass
class Upstream:
    url: str
    app: Any

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fake/stats").json()

    def set_scenario(self, scenario: dict[str, Any]) -> None:
        httpx.post(f"{self.url}/_fake/scenario", json=scenario).raise_for_status()


@dataclass
class Proxy:
    url: str
    gateway: Gateway
    data_dir: Path

    def flush(self) -> None:
        self.gateway.persist_keys()
        self.gateway.writer.flush()

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Read the proxy's DuckDB after flushing (tests only: the app itself never reads on the request path)."""
        self.flush()
        cur = self.gateway.store.cursor()
        try:
            return cur.execute(sql, params or []).fetchall()
        finally:
            cur.close()


def wait_rows(proxy: Proxy, sql: str, params: list[Any] | None = None, timeout: float = 5.0) -> list[tuple[Any, ...]]:
    """Rows of `sql` once there are some: a stream is recorded when its relay ends, which can be a moment after
    the client has seen the last byte."""
    deadline = time.monotonic() + timeout
    while True:
        rows = proxy.rows(sql, params)
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture
def start_upstream() -> Iterator[Callable[..., Upstream]]:
    with contextlib.ExitStack() as stack:

        def start(scenario: dict[str, Any] | None = None, clock: Callable[[], float] | None = None) -> Upstream:
            app = create_fake(scenario, clock)
            url = stack.enter_context(serve(app))
            return Upstream(url, app)

        yield start


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    with contextlib.ExitStack() as stack:
        count = 0

        def start(upstream_url: str, **settings: Any) -> Proxy:
            nonlocal count
            count += 1
            data_dir = tmp_path / f"proxy{count}"
            options: dict[str, Any] = {
                "data_dir": data_dir,
                "upstream_url": upstream_url,
                "admin_token": ADMIN_TOKEN,
                "access_tokens": [CLIENT_TOKEN],
                "api_keys": POOL_KEYS,
                "recheck_interval_s": 3600,
                **settings,
            }
            app = create_app(Settings(_env_file=None, **options))  # type: ignore[call-arg]
            url = stack.enter_context(serve(app, lifespan="on"))
            return Proxy(url, app.state.gateway, data_dir)

        yield start


@pytest.fixture
def upstream(start_upstream: Callable[..., Upstream]) -> Upstream:
    return start_upstream(SCENARIO)


@pytest.fixture
def proxy(start_proxy: Callable[..., Proxy], upstream: Upstream) -> Proxy:
    return start_proxy(upstream.url)
