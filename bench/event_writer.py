"""The event writer alone: queue → one writer thread → batched column appends to an on-disk DuckDB file.

A producer thread builds and enqueues N request events and N attempt events (what N proxied calls record) as fast
as it can; the writer's rate is rows written / time from the first enqueue until `stop()` has written the last one.
Reported: writer rows/s, the producer's cost per event (building the dataclass + `record()`, and `record()` alone),
rows lost (enqueued − counted in the file after `stop()`), a baseline of single-row INSERTs on the same schema, and
the same drain with the writer's former append (an Arrow table built from the same column lists, `INSERT ... BY
NAME SELECT * FROM batch`), for the price of keeping pyarrow out of the proxy (events.insert_columns).

    python -m bench.event_writer [--events 500000] [--baseline-rows 2000]

Target: >= 50,000 events/s written, zero lost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from bench.common import RESULTS, load_average, markdown_table, write_json
from proxy_service.events import AttemptEvent, Columns, EventWriter, RequestEvent
from proxy_service.server import without_pandas
from proxy_service.store import Store

TARGET_EVENTS_PER_S = 50_000.0
KEYS = [f"k_{i:012x}" for i in range(12)]


class ArrowWriter(EventWriter):
    """The writer with its former append: an Arrow table per batch (pyarrow loaded into the process)."""

    def _append(self, cur: duckdb.DuckDBPyConnection, table: str, batch: Columns) -> None:
        import pyarrow as pa

        arrow_batch = pa.Table.from_pydict(batch)  # noqa: F841  (read by DuckDB by name)
        cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM arrow_batch")


def _events(n_calls: int) -> list[RequestEvent | AttemptEvent]:
    """n_calls request events and n_calls attempt events, interleaved as the relay records them."""
    out: list[RequestEvent | AttemptEvent] = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for i in range(n_calls):
        rid = uuid.uuid4().hex
        key = KEYS[i % len(KEYS)]
        out.append(
            AttemptEvent(
                ts=now,
                request_id=rid,
                attempt=1,
                key_id=key,
                project=f"p{i % 6}",
                model="gemini-2.5-flash",
                upstream_status=200,
                outcome="ok",
                latency_ms=1.5 + (i % 7),
            )
        )
        out.append(
            RequestEvent(
                ts=now,
                request_id=rid,
                client_id="t_0123456789",
                surface="gemini",
                operation="generateContent",
                model="gemini-2.5-flash",
                stream=False,
                status=200,
                outcome="success",
                attempts=1,
                key_id=key,
                project=f"p{i % 6}",
                latency_ms=2.0 + (i % 11),
                prompt_tokens=7,
                output_tokens=40 + i % 30,
                thinking_tokens=100,
                total_tokens=147 + i % 30,
                request_bytes=83,
                response_bytes=900,
            )
        )
    return out


def _build_cost_us(n: int) -> float:
    """µs to build one event the way the relay does (a slotted dataclass with keyword arguments)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    t0 = time.perf_counter()
    for i in range(n):
        RequestEvent(
            ts=now,
            request_id="0123456789abcdef0123456789abcdef",
            client_id="t_0123456789",
            surface="gemini",
            operation="generateContent",
            model="gemini-2.5-flash",
            stream=False,
            status=200,
            outcome="success",
            attempts=1,
            key_id="k_000000000000",
            project="p1",
            latency_ms=2.0 + i,
            request_bytes=83,
        )
    return (time.perf_counter() - t0) / n * 1e6


def _count(store: Store) -> tuple[int, int]:
    cur = store.cursor()
    ((requests, attempts),) = cur.execute(
        "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts)"
    ).fetchall()
    cur.close()
    return requests, attempts


def drain_run(events: list[RequestEvent | AttemptEvent], path: Path, writer_class: type[EventWriter]) -> dict[str, Any]:
    """Everything enqueued first, then the writer empties the queue: its own rate (after a warm-up file)."""
    warm_store = Store(path.with_suffix(".warm.duckdb"))
    warm = writer_class(warm_store)
    for ev in events[:2000]:
        warm.record(ev)
    warm.start()
    warm.stop()
    warm_store.close()
    store = Store(path)
    writer = writer_class(store)
    for ev in events:
        writer.record(ev)
    t0 = time.perf_counter()
    writer.start()
    writer.stop(timeout=600)
    elapsed = time.perf_counter() - t0
    requests, attempts = _count(store)
    store.close()
    return {
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round((requests + attempts) / elapsed, 0) if elapsed else 0.0,
        "lost": len(events) - requests - attempts,
        "failures": writer.stats.failures,
    }


def writer_run(n_calls: int, workdir: Path) -> dict[str, Any]:
    """Two phases on two fresh files, n_calls request + n_calls attempt events each.

    drain: everything is enqueued before the writer starts (record() alone, no other thread running), then the
    writer empties the queue: its own rate. concurrent: a producer thread enqueues while the writer writes, both
    competing for the GIL (harsher than the proxy, whose event loop produces ~2 events per request).
    """
    events = _events(n_calls)
    total = len(events)

    # Warm-up: the process's first Arrow append to DuckDB costs ~1 s of one-time set-up; not the writer's rate.
    warm_store = Store(workdir / "warm-up.duckdb")
    warm = EventWriter(warm_store)
    for ev in events[:2000]:
        warm.record(ev)
    warm.start()
    warm.stop()
    warm_store.close()

    store = Store(workdir / "drain.duckdb")
    writer = EventWriter(store)
    record = writer.record
    t0 = time.perf_counter()
    for ev in events:
        record(ev)
    record_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer.start()
    writer.stop(timeout=600)
    drain_s = time.perf_counter() - t0
    requests, attempts = _count(store)
    store.close()

    store2 = Store(workdir / "concurrent.duckdb")
    writer2 = EventWriter(store2)
    writer2.start()
    produce_s = 0.0

    def produce() -> None:
        nonlocal produce_s
        rec = writer2.record
        t = time.perf_counter()
        for ev in events:
            rec(ev)
        produce_s = time.perf_counter() - t

    t0 = time.perf_counter()
    producer = threading.Thread(target=produce, name="bench-producer")
    producer.start()
    producer.join()
    writer2.stop(timeout=600)
    concurrent_s = time.perf_counter() - t0
    requests2, attempts2 = _count(store2)
    store2.close()

    written = requests + attempts
    arrow = drain_run(events, workdir / "arrow.duckdb", ArrowWriter)
    return {
        "arrow": arrow,
        "events": total,
        "requests_rows": requests,
        "attempts_rows": attempts,
        "lost": total - written,
        "failures": writer.stats.failures,
        "flushes": writer.stats.flushes,
        "elapsed_s": round(drain_s, 3),
        "events_per_s": round(written / drain_s, 0) if drain_s else 0.0,
        "record_us": round(record_s / total * 1e6, 3),
        "concurrent": {
            "elapsed_s": round(concurrent_s, 3),
            "events_per_s": round((requests2 + attempts2) / concurrent_s, 0) if concurrent_s else 0.0,
            "lost": total - requests2 - attempts2,
            "failures": writer2.stats.failures,
            "record_us": round(produce_s / total * 1e6, 3),
        },
    }


def single_insert_run(n: int, workdir: Path) -> dict[str, Any]:
    """The baseline: one INSERT statement per event (what a naive logger does on every call)."""
    events = [e for e in _events(n) if isinstance(e, RequestEvent)]
    store = Store(workdir / "single.duckdb")
    cur = store.cursor()
    cols = list(RequestEvent.__slots__)  # type: ignore[attr-defined]
    sql = f"INSERT INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    t0 = time.perf_counter()
    for ev in events:
        cur.execute(sql, [getattr(ev, c) for c in cols])
    elapsed = time.perf_counter() - t0
    ((rows,),) = cur.execute("SELECT count(*) FROM requests").fetchall()
    cur.close()
    store.close()
    return {"rows": rows, "elapsed_s": round(elapsed, 3), "rows_per_s": round(rows / elapsed, 0)}


def run(events: int = 500_000, baseline_rows: int = 2000, workdir: Path | None = None) -> dict[str, Any]:
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="keyrack-bench-writer-") as tmp:
        wd = workdir or Path(tmp)
        w = writer_run(max(1, events // 2), wd)
        b = single_insert_run(baseline_rows, wd)
    build_us = _build_cost_us(min(100_000, max(1000, events // 5)))
    return {
        "load_average": [load_before, load_average()],
        "writer": w,
        "single_insert": b,
        "build_us": round(build_us, 3),
        "enqueue_us": round(build_us + w["record_us"], 3),
        "ratio": round(w["events_per_s"] / b["rows_per_s"], 1) if b["rows_per_s"] else 0.0,
        "targets": {
            "events_per_s": {
                "target": f">= {TARGET_EVENTS_PER_S:,.0f}",
                "met": w["events_per_s"] >= TARGET_EVENTS_PER_S,
            },
            "lost": {
                "target": "== 0",
                "met": w["lost"] == 0
                and w["failures"] == 0
                and w["concurrent"]["lost"] == 0
                and w["concurrent"]["failures"] == 0,
            },
        },
    }


def report(f: dict[str, Any]) -> str:
    w, b = f["writer"], f["single_insert"]
    c = w["concurrent"]
    table = markdown_table(
        ["method", "rows", "seconds", "rows/s", "lost"],
        [
            ["EventWriter, draining a full queue", w["events"], w["elapsed_s"], w["events_per_s"], w["lost"]],
            [
                "EventWriter, producer thread enqueuing meanwhile",
                w["events"],
                c["elapsed_s"],
                c["events_per_s"],
                c["lost"],
            ],
            [
                "former Arrow append, draining a full queue",
                w["events"],
                w["arrow"]["elapsed_s"],
                w["arrow"]["events_per_s"],
                w["arrow"]["lost"],
            ],
            ["single-row INSERT (baseline)", b["rows"], b["elapsed_s"], b["rows_per_s"], "-"],
        ],
    )
    lines = [
        "### Event writer (on-disk DuckDB, request + attempt events)",
        "",
        table,
        "",
        f"- machine load average (1 min) before / after: {f['load_average'][0]} / {f['load_average'][1]} on 2 cores",
        f"- writer / single-row INSERT: {f['ratio']:,.0f}x; {w['flushes']} flushes, {w['failures']} failed",
        f"- writer (JSON column texts, no pyarrow) / former Arrow append, both draining: "
        f"{w['events_per_s'] / max(1.0, w['arrow']['events_per_s']):.2f}",
        f"- producer cost per event: build {f['build_us']:.2f} µs + record() {w['record_us']:.2f} µs "
        f"= {f['enqueue_us']:.2f} µs (record() while the writer competes for the GIL: {c['record_us']:.2f} µs)",
    ]
    for name, t in f["targets"].items():
        lines.append(f"- target {name} {t['target']}: {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=500_000, help="events in all, half requests, half attempts")
    ap.add_argument("--baseline-rows", type=int, default=2000, help="rows for the single-INSERT baseline")
    ap.add_argument("--json", type=Path, default=RESULTS / "event_writer.json", help="where to write the figures")
    args = ap.parse_args(argv)
    without_pandas()  # as `keyrack serve` does: DuckDB's parameter binding would otherwise import pandas
    figures = run(args.events, args.baseline_rows)
    print(report(figures))
    write_json(args.json, figures)
    return 0 if figures["writer"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
