"""Stats queries on a big events table while the writer keeps appending.

Builds a DuckDB file with N synthetic `requests` rows (default 10 million, generated in SQL with range(): ~90 days
ending now, ~1,000 keys in 40 projects, 5 models, success / 429 / 503 mixes, long-tailed latencies), builds the
rollup from them (what `install()` does on first start), then starts the real EventWriter with the rollup hook and
a producer thread recording request events at `--rate` per second (default 2,000), and meanwhile times, through the
`queries` module functions the admin API calls: the summary (1 min / 1 h / 24 h / month), and the hour / day / week /
month series over the whole range (group_by none and model) in a DST zone, plus a few other shapes for reference.

    python -m bench.analytics [--rows 10000000] [--runs 7] [--rate 2000] [--tz America/New_York] [--db PATH]

Target: p50 ≤ 500 ms for the summary and each series (group_by none) on 2 cores, with the writer busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.common import RESULTS, markdown_table, write_json
from proxy_service.analytics import queries
from proxy_service.analytics.rollup import Rollup
from proxy_service.events import EventWriter, RequestEvent
from proxy_service.store import Store

TARGET_MS = 500.0
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-2.0-flash", "gemini-embedding-001"]

# One hash per row; every field is a different slice of it. Spread: ~90 days up to `end`, evenly in time.
GENERATE = """
INSERT INTO requests BY NAME
SELECT ts, request_id, 'c' || (h % {clients}) AS client_id, CASE WHEN h % 5 = 0 THEN 'openai' ELSE 'gemini' END AS surface,
       'generateContent' AS operation, list_extract(?, 1 + CAST((h >> 8) % 5 AS INTEGER)) AS model,
       (h >> 11) % 3 = 0 AS stream,
       CAST(CASE WHEN r < 92 THEN 200 WHEN r < 97 THEN 429 WHEN r < 99 THEN 503 ELSE 400 END AS SMALLINT) AS status,
       CASE WHEN r < 92 THEN 'success' WHEN r < 97 THEN 'exhausted' WHEN r < 99 THEN 'upstream_error'
            ELSE 'client_error' END AS outcome,
       CAST(1 + (h >> 40) % 2 AS SMALLINT) AS attempts,
       'k_' || lpad(CAST(k AS VARCHAR), 12, '0') AS key_id, 'p' || (k % 40) AS project,
       -- long tail: most calls 0.2-3 s, some up to 60 s
       CAST(200 + (h >> 24) % 2800 + CASE WHEN (h >> 50) % 20 = 0 THEN (h >> 30) % 57000 ELSE 0 END AS DOUBLE)
           AS latency_ms,
       CAST(50 + (h >> 33) % 400 AS DOUBLE) AS ttfb_ms,
       CAST((h >> 14) % 4000 AS INTEGER) AS prompt_tokens, CAST((h >> 26) % 1200 AS INTEGER) AS output_tokens,
       0 AS thinking_tokens, 0 AS cached_tokens,
       CAST((h >> 14) % 4000 + (h >> 26) % 1200 AS INTEGER) AS total_tokens,
       1200 AS request_bytes, 3400 AS response_bytes
FROM (
    SELECT ? - to_microseconds(CAST((? - i) * ? AS BIGINT)) AS ts, 'r' || i AS request_id, hash(i) AS h,
           CAST(hash(i) % 100 AS INTEGER) AS r, CAST((hash(i) >> 16) % 1000 AS INTEGER) AS k
    FROM range(?) t(i)
)"""


def build(path: Path, rows: int, end: datetime, clients: int = 7) -> dict[str, float]:
    store = Store(path)
    cur = store.cursor()
    t0 = time.perf_counter()
    step_us = 90 * 86400 * 1_000_000 // max(rows, 1)
    cur.execute(GENERATE.format(clients=clients), [MODELS, end, rows, step_us, rows])
    generated = time.perf_counter() - t0
    t0 = time.perf_counter()
    Rollup().install(cur)
    rolled = time.perf_counter() - t0
    cur.execute("CHECKPOINT")
    cur.close()
    store.close()
    return {"generate_s": generated, "rollup_build_s": rolled}


class Appender(threading.Thread):
    """Records request events at `rate` per second (in 10 ms slices) until stopped."""

    def __init__(self, writer: EventWriter, rate: float) -> None:
        super().__init__(name="bench-appender", daemon=True)
        self.writer, self.rate = writer, rate
        self.sent = 0
        self.max_depth = 0
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self._halt.is_set():
            due = int((time.perf_counter() - started) * self.rate)
            now = datetime.now(UTC).replace(tzinfo=None)
            for i in range(self.sent, due):
                self.writer.record(
                    RequestEvent(
                        ts=now,
                        request_id=uuid.uuid4().hex,
                        client_id="bench",
                        surface="gemini",
                        operation="generateContent",
                        model=MODELS[i % 5],
                        stream=False,
                        status=200,
                        outcome="success",
                        attempts=1,
                        key_id=f"k_{i % 1000:012d}",
                        project=f"p{i % 40}",
                        latency_ms=float(300 + i % 2000),
                        total_tokens=500,
                    )
                )
            self.sent = max(self.sent, due)
            self.max_depth = max(self.max_depth, self.writer.depth)
            time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    fn()  # warm-up (caches, first page-in)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s appended while measuring")
    ap.add_argument("--tz", default="America/New_York")
    ap.add_argument("--db", type=Path, default=None, help="reuse/keep this file (default: a temporary one)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="keyrack-bench-") if args.db is None else None
    path = args.db or Path(tmp.name) / "keyrack.duckdb"  # type: ignore[union-attr]
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    setup: dict[str, float] = {}
    if not path.exists():
        print(f"building {args.rows:,} rows in {path} ...", file=sys.stderr)
        setup = build(path, args.rows, end)
    size_mb = path.stat().st_size / 1e6

    store = Store(path)
    writer = EventWriter(store)
    rollup = Rollup()
    cur0 = store.cursor()
    rollup.install(cur0)  # no-op when the rollup matches; rebuilds a --db file written by an older run otherwise
    cur0.close()
    writer.after_append.append(rollup.on_append)
    writer.start()
    appender = Appender(writer, args.rate)
    appender.start()
    cur = store.cursor()
    tz = ZoneInfo(args.tz)
    now = datetime.now(UTC).replace(tzinfo=None)
    start = now - timedelta(days=90)
    cases: list[tuple[str, Callable[[], Any], bool]] = [
        ("summary (4 windows)", lambda: queries.summary(cur, tz, now), True)
    ]

    def series(g: str, group_by: str) -> Callable[[], Any]:
        lo, hi = queries.series_range(g, tz, start, now, now)
        return lambda: queries.series(cur, g, group_by, tz, lo, hi)

    cases += [(f"series {g} (90 d)", series(g, "none"), True) for g in queries.GRANULARITIES]
    cases += [(f"series {g} by model", series(g, "model"), False) for g in queries.GRANULARITIES]
    lo, hi = queries.series_range("day", tz, start, now, now)
    cases += [
        ("series day by key (top 10)", lambda: queries.series(cur, "day", "key", tz, lo, hi), False),
        ("series day by project", lambda: queries.series(cur, "day", "project", tz, lo, hi), False),
        ("top 10 keys (90 d)", lambda: queries.top(cur, "key", start, now, 10), False),
        ("top models (90 d)", lambda: queries.top(cur, "model", start, now, 10), False),
        (
            "series day, raw rows (no rollup)",
            lambda: queries.series(cur, "day", "none", tz, lo, hi, use_rollup=False),
            False,
        ),
    ]
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    figures: list[dict[str, Any]] = []
    table = []

    def folded(fn: Callable[[], Any]) -> Callable[[], Any]:
        """What the admin API does: fold the batches appended since the last fold, then read (both timed)."""
        return lambda: (writer.submit(rollup.fold).result(), fn())

    for name, fn, gated in cases:
        ms = sorted(timed(folded(fn), args.runs if gated else max(2, args.runs // 2)))  # reference shapes: fewer runs
        p50 = statistics.median(ms)
        verdict = ("ok" if p50 <= TARGET_MS else "MISS") if gated else "-"
        figures.append({"query": name, "p50_ms": p50, "min_ms": ms[0], "max_ms": ms[-1], "target": gated})
        table.append((name, p50, ms[0], ms[-1], verdict))
    elapsed = time.perf_counter() - t_start
    appender.stop()
    writer.flush()
    writer.submit(rollup.fold).result()
    total = cur.execute("SELECT count(*) FROM requests").fetchone()
    rolled = cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone()
    cur.close()
    writer.stop()
    store.close()
    achieved = appender.sent / elapsed if elapsed else 0.0
    load = (load_before, os.getloadavg()[0])

    print(
        f"\nrows {args.rows:,}  file {size_mb:,.0f} MB  zone {args.tz}  runs {args.runs}  "
        + "  ".join(f"{k} {v:.1f}" for k, v in setup.items())
    )
    print(f"machine load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
    print(
        f"appended meanwhile: {appender.sent:,} events ({achieved:,.0f}/s, target {args.rate:,.0f}/s), "
        f"max queue depth {appender.max_depth:,}; rollup == count(*): {rolled == total} ({total[0] if total else 0:,})\n"
    )
    print(markdown_table(["query", "p50 ms", "min ms", "max ms", f"≤ {TARGET_MS:.0f} ms"], table))
    write_json(
        RESULTS / "analytics.json",
        {
            "rows": args.rows,
            "tz": args.tz,
            "rate": args.rate,
            "achieved_rate": achieved,
            "setup": setup,
            "file_mb": size_mb,
            "load": load,
            "figures": figures,
        },
    )
    if tmp is not None:
        tmp.cleanup()
    missed = [f["query"] for f in figures if f["target"] and f["p50_ms"] > TARGET_MS]
    return 1 if missed or rolled != total else 0


if __name__ == "__main__":
    sys.exit(main())
