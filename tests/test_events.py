"""The event writer: it sleeps between flushes yet answers jobs, full batches and stop at once, and writes every
event recorded from any thread."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import duckdb
import pytest

from proxy_service.events import AttemptEvent, EventWriter, WriterUnavailable
from proxy_service.store import Store

MODEL = "gemini-2.5-flash"


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


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def test_a_job_whose_waiter_gave_up_still_runs_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`run(timeout=...)` cancels its future through asyncio.wrap_future when it times out (and so does a task
    cancelled at shutdown); the job must still write, and settling the cancelled future must not raise on the
    writer thread (it used to: InvalidStateError, logged as a failed job)."""
    store = Store(tmp_path / "c.duckdb")
    writer = EventWriter(store, flush_interval=0.05)
    writer.start()
    gate = threading.Event()

    def slow_write(cur: duckdb.DuckDBPyConnection) -> int:
        gate.wait(10)
        cur.execute("CREATE TABLE late AS SELECT 42 AS v")
        return 42

    async def give_up() -> None:
        with pytest.raises(WriterUnavailable):
            await writer.run(slow_write, timeout=0.05)

    try:
        with caplog.at_level(logging.ERROR, logger="keyrack"):
            asyncio.run(give_up())
            gate.set()
            assert writer.submit(lambda cur: cur.execute("SELECT v FROM late").fetchone()).result(10) == (42,)
        assert writer.alive
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    finally:
        gate.set()
        writer.stop(timeout=10)
        store.close()
