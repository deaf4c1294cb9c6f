"""Class 11 (issue 23): Explore has a time limit, a cap on heavy reads running at once, and encodes its answers off
the event loop: while several heavy pivots run, /healthz and a proxied call answer at once. Real proxy over a
DuckDB file of synthetic calls whose pre-aggregates are still being built (so Explore reads raw rows: heavy)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bench.analytics import GENERATE, MODELS
from proxy_service.admin import explore as admin_explore
from proxy_service.settings import Settings
from proxy_service.store import Store
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, SCENARIO
from tests.servers import serve_gateway

ROWS = 80_000
LIMIT_S = 0.1
# /healthz and a proxied call while heavy reads run: far below the seconds a blocked loop took, with room for a
# machine at load 20.
HEALTH_S = 2.0
CALL_S = 5.0
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
# Percentiles by key and hour of day over every raw row: seconds of work at this size.
HEAVY = {
    "measures": ["calls", "p99_latency_ms", "p50_ttfb_ms", "avg_latency_ms"],
    "dimensions": ["key", "hour_of_day"],
    "from": "2020-01-01T00:00:00Z",
}


@dataclass
class Env:
    url: str
    http: httpx.Client

    def explore(self, body: dict[str, Any]) -> tuple[int, str | None, float]:
        started = time.monotonic()
        r = self.http.post("/admin/api/explore", json=body)
        reason = r.json().get("error", {}).get("reason") if r.status_code != 200 else None
        return r.status_code, reason, time.monotonic() - started


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("explore-limits")
    store = Store(data_dir / "keyrack.duckdb")
    cur = store.cursor()
    end = datetime.now(UTC).replace(tzinfo=None)
    step_us = 2 * 86400 * 1_000_000 // ROWS
    cur.execute(GENERATE.format(clients=7), [MODELS, end, ROWS, step_us, ROWS])
    cur.execute("CHECKPOINT")
    cur.close()
    store.close()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        admin_token=ADMIN_TOKEN,
        access_tokens=[CLIENT_TOKEN],
        api_keys=POOL_KEYS,
        recheck_interval_s=3600,
        snapshot_interval_s=0,
        explore_timeout_s=LIMIT_S,
    )
    with serve_gateway(settings, SCENARIO) as (url, _app):
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        with httpx.Client(base_url=url, headers=admin, timeout=120) as client:
            yield Env(url, client)


def watch(env: Env, threads: list[threading.Thread]) -> tuple[list[float], list[tuple[int, float]]]:
    """Start `threads`, and until they end time /healthz and a proxied call, again and again."""
    for t in threads:
        t.start()
    health: list[float] = []
    calls: list[tuple[int, float]] = []
    while any(t.is_alive() for t in threads) and len(health) < 500:
        started = time.monotonic()
        assert httpx.get(f"{env.url}/healthz", timeout=30).status_code == 200
        health.append(time.monotonic() - started)
        if len(calls) < 5:
            started = time.monotonic()
            r = httpx.post(
                f"{env.url}{GEN}",
                headers={"x-goog-api-key": CLIENT_TOKEN},
                json={"contents": [{"parts": [{"text": "meanwhile"}]}]},
                timeout=30,
            )
            calls.append((r.status_code, time.monotonic() - started))
        time.sleep(0.02)
    for t in threads:
        t.join(120)
    return health, calls


def test_heavy_explores_stop_at_the_time_limit_and_the_proxy_stays_fast(env: Env) -> None:
    answers: list[tuple[int, str | None, float]] = []
    threads = [threading.Thread(target=lambda: answers.append(env.explore(HEAVY))) for _ in range(6)]
    health, calls = watch(env, threads)
    assert len(answers) == 6
    assert all(status in (200, 408, 503) for status, _, _ in answers), answers
    assert any(status == 408 and reason == "explore_timeout" for status, reason, _ in answers), answers
    # Each waited at most for a slot, then ran at most the limit (plus the interrupt's own latency).
    assert max(took for _, _, took in answers) < LIMIT_S + admin_explore.SLOT_WAIT_S + 5, answers
    assert max(health) < HEALTH_S, health
    assert calls and all(status == 200 and took < CALL_S for status, took in calls), calls


def test_explores_past_the_cap_answer_busy(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_explore, "SLOT_WAIT_S", 0.1, raising=False)
    # A longer limit (a live setting): the first reads hold their slots while the others come.
    env.http.patch("/admin/api/config", json={"explore_timeout_s": 2})
    try:
        answers: list[tuple[int, str | None, float]] = []
        threads = [threading.Thread(target=lambda: answers.append(env.explore(HEAVY))) for _ in range(6)]
        health, calls = watch(env, threads)
    finally:
        env.http.patch("/admin/api/config", json={"explore_timeout_s": LIMIT_S})
    statuses = sorted(status for status, _, _ in answers)
    assert statuses.count(503) >= 1 and all(s in (200, 408, 503) for s in statuses), answers
    assert all(reason == "explore_busy" for status, reason, _ in answers if status == 503), answers
    assert max(health) < HEALTH_S, health
    assert calls and all(status == 200 and took < CALL_S for status, took in calls), calls
