"""User SQL through the sandbox (a worker process over a Parquet snapshot) against the old in-process path (a cursor
of the proxy's own connection), on the same data, and the snapshot's refresh times.

Builds a DuckDB file with N synthetic `requests` rows (bench.analytics.GENERATE, no pre-aggregates), then times:
- `sql_guard.run` on the store (the old path) and `Sandbox.run` (the new one) for a few aggregates, p50 of --runs;
  the sandbox's figure includes its freshness check (writer flush, snapshot refresh when stale: nothing changed here);
- the first snapshot (every table written whole) and an incremental refresh after --append new rows.

    python -m bench.sql_sandbox [--rows 1000000] [--runs 9] [--append 5000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.analytics import GENERATE, MODELS
from proxy_service.analytics import queries, sql_guard
from proxy_service.analytics.sql_sandbox import Sandbox
from proxy_service.events import EventWriter
from proxy_service.store import Store

QUERIES = {
    "count": "SELECT count(*) FROM requests",
    "by model": "SELECT model, count(*), avg(latency_ms), sum(total_tokens) FROM requests GROUP BY model",
    "by key, last day": "SELECT key_id, count(*) AS n FROM requests WHERE ts > now()::TIMESTAMP - INTERVAL 1 DAY "
    "GROUP BY key_id ORDER BY n DESC LIMIT 20",
}


def p50_ms(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--append", type=int, default=5_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "keyrack.duckdb"
        store = Store(path)
        cur = store.cursor()
        end = datetime.now(UTC).replace(tzinfo=None)
        step_us = 90 * 86400 * 1_000_000 // args.rows
        started = time.perf_counter()
        cur.execute(GENERATE.format(clients=7), [MODELS, end, args.rows, step_us, args.rows])
        queries.install_safe_views(cur)
        cur.execute("CHECKPOINT")
        print(f"{args.rows:,} requests rows generated in {time.perf_counter() - started:.1f} s")
        sandbox = Sandbox(store, EventWriter(store), Path(tmp) / "sql-sandbox", 1, 256, 2)
        sandbox.start()
        started = time.perf_counter()
        sandbox.snapshot.refresh()
        print(f"first snapshot (whole tables): {time.perf_counter() - started:.2f} s")
        cur.execute(
            f"INSERT INTO requests SELECT * FROM requests USING SAMPLE {int(args.append)} ROWS"  # nosec: an int
        )
        started = time.perf_counter()
        sandbox.snapshot.refresh()
        print(f"incremental refresh after {args.append:,} new rows: {(time.perf_counter() - started) * 1000:.0f} ms")
        started = time.perf_counter()
        sandbox.snapshot.refresh()
        print(f"refresh with nothing new: {(time.perf_counter() - started) * 1000:.1f} ms")
        print(f"{'query':<20} {'in process ms':>14} {'sandbox ms':>11} {'ratio':>6}")
        for name, sql in QUERIES.items():
            old = p50_ms(lambda sql=sql: sql_guard.run(store, sql, 60, 100_000), args.runs)  # type: ignore[misc]
            new = p50_ms(lambda sql=sql: sandbox.run(sql, 60, 100_000, None), args.runs)  # type: ignore[misc]
            print(f"{name:<20} {old:>14.1f} {new:>11.1f} {new / old:>6.2f}")
        sandbox.close()
        cur.close()
        store.close()


if __name__ == "__main__":
    main()
