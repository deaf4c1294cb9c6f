"""Regression tests for the fixes the benchmarks led to (bench/quota_pressure.py, bench/proxy_throughput.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from proxy_service.events import AttemptEvent, EventWriter
from proxy_service.keys import KeySpec, key_id
from proxy_service.pool import Pool
from proxy_service.quota import ModelLimits, QuotaViolation
from proxy_service.store import Store
from proxy_service.upstream import upstream_request

MODEL = "gemini-2.5-flash"
T0 = 1_790_000_000.0
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"


def _pool(limits: dict[str, ModelLimits]) -> tuple[Pool, list[float]]:
    now = [T0]
    pool = Pool("quota_aware", limits=limits, clock=lambda: now[0])
    pool.add([KeySpec("a1", "pa"), KeySpec("a2", "pa")])
    return pool, now


def test_a_refused_attempt_gives_its_slot_back() -> None:
    pool, now = _pool({MODEL: ModelLimits(rpm=3)})
    a1 = pool.keys[key_id("a1")]
    for _ in range(2):
        pool.started(a1, MODEL)
        now[0] += 1
    pool.started(a1, MODEL)  # upstream refuses this one (its own window disagreed): 429
    pool.rate_limited(a1, MODEL, QuotaViolation("minute", RPM_ID, 1.0, 3, MODEL))
    assert pool.tracker.usage("pa", MODEL, now[0])["rpm_used"] == 2  # upstream counted 2, so do we
    now[0] += 1.5  # the 429's cooldown is over: the slot the refused call never used is free
    assert pool.choose(MODEL).scope == "pa"


def test_a_limit_learned_from_observed_usage_is_not_one_too_high() -> None:
    pool, now = _pool({MODEL: ModelLimits()})
    a1 = pool.keys[key_id("a1")]
    for _ in range(5):  # upstream admitted 5 ...
        pool.started(a1, MODEL)
        now[0] += 1
    pool.started(a1, MODEL)  # ... and refused the 6th, with a 429 that gives no quotaValue
    pool.rate_limited(a1, MODEL, QuotaViolation("minute", RPM_ID, 30.0, None, MODEL))
    assert pool.tracker.limits("pa", MODEL).rpm == 5


def test_writer_sleeps_between_flushes_but_answers_jobs_and_stop_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "w.duckdb")
    writer = EventWriter(store, flush_interval=30.0)  # a flush tick far away: only the wake-ups can be seen
    writer.start()
    try:
        for i in range(10):
            writer.record(
                AttemptEvent(
                    ts=_now(),
                    request_id=f"r{i}",
                    attempt=1,
                    key_id="k",
                    project=None,
                    model=MODEL,
                    upstream_status=200,
                    outcome="ok",
                    latency_ms=1.0,
                )
            )
        started = time.perf_counter()
        writer.flush(timeout=10)  # a job wakes the writer: events queued before it are written first
        assert time.perf_counter() - started < 10
        assert writer.stats.written["attempts"] == 10
        writer.batch_rows = 100
        for i in range(100):  # a full batch wakes it too
            writer.record(
                AttemptEvent(
                    ts=_now(),
                    request_id=f"b{i}",
                    attempt=1,
                    key_id="k",
                    project=None,
                    model=MODEL,
                    upstream_status=200,
                    outcome="ok",
                    latency_ms=1.0,
                )
            )
        deadline = time.monotonic() + 10
        while writer.stats.written["attempts"] < 110 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert writer.stats.written["attempts"] == 110
    finally:
        started = time.perf_counter()
        writer.stop(timeout=10)
        assert time.perf_counter() - started < 10 and not writer._thread.is_alive()
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM attempts").fetchone() == (110,)
    cur.close()
    store.close()


def test_events_recorded_from_other_threads_are_all_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.duckdb")
    writer = EventWriter(store, flush_interval=0.05, batch_rows=500)
    writer.start()

    def produce(tag: str) -> None:
        for i in range(2000):
            writer.record(
                AttemptEvent(
                    ts=_now(),
                    request_id=f"{tag}{i}",
                    attempt=1,
                    key_id="k",
                    project=None,
                    model=MODEL,
                    upstream_status=200,
                    outcome="ok",
                    latency_ms=1.0,
                )
            )

    threads = [threading.Thread(target=produce, args=(t,)) for t in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.stop(timeout=30)
    cur = store.cursor()
    assert cur.execute("SELECT count(*) FROM attempts").fetchone() == (6000,)
    cur.close()
    store.close()


def test_upstream_request_matches_what_build_request_sends() -> None:
    client = httpx.AsyncClient(base_url="http://upstream.test:8090", timeout=httpx.Timeout(300, connect=10))
    query: list[tuple[str, str | int | float | bool | None]] = [("alt", "sse")]
    headers = {"content-type": "application/json", "x-goog-api-key": "secret"}
    for _ in range(2):  # second time from the URL cache
        req = upstream_request(client, "POST", "/v1beta/models/m:streamGenerateContent", query, headers, b"{}")
        ref = client.build_request(
            "POST", "/v1beta/models/m:streamGenerateContent", params=query, headers=headers, content=b"{}"
        )
        assert req.url == ref.url and req.content == ref.content == b"{}"
        for name in ("host", "content-length", "content-type", "x-goog-api-key"):
            assert req.headers[name] == ref.headers[name]
        assert req.extensions["timeout"] == ref.extensions["timeout"]
    get = upstream_request(client, "GET", "/v1beta/models", [("pageSize", "1")], {"x-goog-api-key": "k"}, None)
    assert str(get.url) == "http://upstream.test:8090/v1beta/models?pageSize=1"
    assert "content-length" not in get.headers and get.content == b""
    assert headers == {"content-type": "application/json", "x-goog-api-key": "secret"}  # the caller's dict untouched


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)
