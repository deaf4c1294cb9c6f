"""The event writer: it sleeps between flushes yet answers jobs, full batches and stop at once, and writes every
event recorded from any thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from proxy_service.events import AttemptEvent, EventWriter
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
