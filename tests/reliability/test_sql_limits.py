"""Class 10 (issue 23): SQL limits hold for every function. A value built outside DuckDB's memory_limit answers a
clear cost error (the worker's address space is capped), a function that ignores the interrupt is stopped at the
time limit plus a grace (its worker process is killed), and meanwhile /healthz and a proxied call answer at once;
the next query works. The queries here pass the allow-list: only the limits stop them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from proxy_service.settings import Settings
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, SCENARIO
from tests.servers import serve_gateway

LIMIT_S = 1.0
# What the proxy may take past the limit: the worker's grace to answer its interrupt, then a kill, on a machine
# that may be very busy.
SLACK_S = 9.0
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"


@dataclass
class Env:
    url: str
    http: httpx.Client

    def query(self, sql: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = self.http.post("/admin/api/query", json={"sql": sql, "format": "json"})
        return r, time.monotonic() - started

    def call(self) -> tuple[int, float]:
        started = time.monotonic()
        r = httpx.post(
            f"{self.url}{GEN}",
            headers={"x-goog-api-key": CLIENT_TOKEN},
            json={"contents": [{"parts": [{"text": "still there?"}]}]},
            timeout=30,
        )
        return r.status_code, time.monotonic() - started


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("limits"),
        admin_token=ADMIN_TOKEN,
        access_tokens=[CLIENT_TOKEN],
        api_keys=POOL_KEYS,
        recheck_interval_s=3600,
        query_timeout_s=LIMIT_S,
        sql_worker_memory_mb=128,
    )
    with serve_gateway(settings, SCENARIO) as (url, _app):
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin, timeout=120) as client:
            yield Env(url, client)


def reason(r: httpx.Response) -> Any:
    return r.json().get("error", {}).get("reason") if r.headers.get("content-type", "").startswith("app") else None


@pytest.mark.parametrize(
    "sql",
    [
        # a padded value over a gigabyte, built whole outside memory_limit
        "SELECT length(printf('%-1400000000s', 'w'))",
        "SELECT length(format('{:^1300000000}', 'v'))",
        # an aggregate that concatenates gigabytes
        "SELECT length(string_agg(repeat('q', 100000), '')) FROM range(25000)",
    ],
)
def test_a_value_built_outside_the_memory_limit_answers_a_cost_error(env: Env, sql: str) -> None:
    r, took = env.query(sql)
    assert r.status_code in (400, 408) and reason(r) in ("query_too_costly", "query_timeout"), r.text[:300]
    assert took < LIMIT_S + SLACK_S, took
    assert "memory" in r.json()["error"]["message"] or reason(r) == "query_timeout"
    r, _ = env.query("SELECT 40 + 2 AS answer")
    assert r.status_code == 200 and r.json()["rows"] == [[42]], r.text[:300]


def test_a_function_that_ignores_the_interrupt_is_stopped_and_the_proxy_serves_meanwhile(env: Env) -> None:
    # An edit distance over two 90,000-character strings: seconds of work DuckDB cannot interrupt.
    sql = (
        "WITH s AS (SELECT string_agg(chr((97 + i % 26)::INTEGER), '') AS a, "
        "string_agg(chr((65 + (i * 7) % 26)::INTEGER), '') AS b FROM range(90000) t(i)) "
        "SELECT levenshtein(a, b) FROM s"
    )
    answer: list[tuple[httpx.Response, float]] = []
    runner = threading.Thread(target=lambda: answer.append(env.query(sql)))
    runner.start()
    health: list[float] = []
    calls: list[tuple[int, float]] = []
    while runner.is_alive() and len(health) < 400:
        started = time.monotonic()
        assert httpx.get(f"{env.url}/healthz", timeout=30).status_code == 200
        health.append(time.monotonic() - started)
        if len(calls) < 3:
            calls.append(env.call())
        time.sleep(0.02)
    runner.join(120)
    ((r, took),) = answer
    assert r.status_code == 408 and reason(r) == "query_timeout", r.text[:300]
    assert took < LIMIT_S + SLACK_S, f"answered after {took:.1f} s against a {LIMIT_S} s limit"
    assert max(health) < 1.0, health
    assert calls and all(status == 200 and t < 3.0 for status, t in calls), calls
    # The next query works, and sees the calls answered just before it.
    r, _ = env.query("SELECT count(*) FROM requests WHERE outcome = 'success'")
    assert r.status_code == 200 and r.json()["rows"][0][0] >= len(calls), r.text[:300]
