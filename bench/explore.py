"""Explore answers on a big events table while the writer keeps appending.

Builds the analytics bench's synthetic `requests` table (`bench.analytics.build`: ~90 days ending now, ~1,000 keys
in 40 projects, 5 models, here with 50 clients), which also builds the rollup and the explore cube, then starts the
real EventWriter with the rollup hook and the analytics bench's appender (`--rate` events/s), and times
`explore.answer` — what `POST /admin/api/explore` runs after folding — for measures × two dimensions over the whole
90 days in a DST zone: p50 of `--runs`, each run = fold + answer. Baseline: the same shapes from raw rows
(use_cube=False), in the same run.

    python -m bench.explore [--rows 10000000] [--runs 7] [--rate 2000] [--tz America/New_York] [--db PATH]

Target: p50 ≤ 1 s for every shape on 2 cores, with the writer busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.analytics import Appender, build, timed
from bench.common import RESULTS, markdown_table, write_json
from proxy_service import explore
from proxy_service.events import EventWriter
from proxy_service.rollup import Rollup
from proxy_service.store import Store

TARGET_MS = 1000.0
CLIENTS = 50
# (name, body): every shape is over the whole 90 days.
SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("calls, tokens by model × client", {"measures": ["calls", "total_tokens"], "dimensions": ["model", "client"]}),
    ("p95 latency by model × client", {"measures": ["calls", "p95_latency_ms"], "dimensions": ["model", "client"]}),
    ("success rate by project × status", {"measures": ["success_rate"], "dimensions": ["project", "status"]}),
    ("p95 by hour of day × weekday", {"measures": ["p95_latency_ms"], "dimensions": ["hour_of_day", "day_of_week"]}),
    ("calls, p95 by day × client (top 10)",
     {"measures": ["calls", "p95_latency_ms"], "dimensions": ["day", "client"], "top_n": 10}),
    ("429s by surface × outcome, compare",
     {"measures": ["exhausted", "upstream_429s"], "dimensions": ["surface", "outcome"], "compare": "previous_period"}),
    ("calls by model, filtered to 2 clients", {"measures": ["calls", "p50_latency_ms"], "dimensions": ["model"],
                                                "filters": {"client": ["c1", "c2"], "stream": [True]}}),
    ("calls by key (top 20)", {"measures": ["calls", "success_rate"], "dimensions": ["key"], "top_n": 20}),
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s appended while measuring")
    ap.add_argument("--tz", default="America/New_York")
    ap.add_argument("--db", type=Path, default=None, help="reuse/keep this file (default: a temporary one)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the raw-rows baseline (slow on 10M rows)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="keyrack-bench-") if args.db is None else None
    path = args.db or Path(tmp.name) / "keyrack.duckdb"  # type: ignore[union-attr]
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    setup: dict[str, float] = {}
    if not path.exists():
        print(f"building {args.rows:,} rows in {path} ...", file=sys.stderr)
        setup = build(path, args.rows, end, clients=CLIENTS)
    store = Store(path)
    writer = EventWriter(store)
    rollup = Rollup()
    cur0 = store.cursor()
    rollup.install(cur0)
    sizes = {t: cur0.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
             for t in ("requests", "cube_1h", "cube_hist_1h")}  # fmt: skip
    cur0.close()
    writer.after_append.append(rollup.on_append)
    writer.start()
    appender = Appender(writer, args.rate)
    appender.start()
    cur = store.cursor()
    tz = ZoneInfo(args.tz)
    now = datetime.now(UTC).replace(tzinfo=None)
    frm = (now - timedelta(days=90)).isoformat()

    def run(body: dict[str, Any], use_cube: bool) -> Any:
        spec, _ = explore.parse_spec({**body, "from": frm, "to": now.isoformat()}, tz, now)
        writer.submit(rollup.fold).result()  # what the admin API does before reading
        return explore.answer(cur, spec, tz, use_cube=use_cube)

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    figures, table = [], []
    for name, body in SHAPES:
        ms = sorted(timed(lambda b=body: run(b, True), args.runs))  # type: ignore[misc]
        raw = [] if args.no_baseline else sorted(timed(lambda b=body: run(b, False), max(1, args.runs // 3)))  # type: ignore[misc]
        p50, base = statistics.median(ms), (statistics.median(raw) if raw else None)
        figures.append({"query": name, "p50_ms": p50, "min_ms": ms[0], "max_ms": ms[-1], "raw_p50_ms": base})
        table.append((name, p50, ms[0], ms[-1], f"{base:,.0f}" if base else "-",
                      f"{base / p50:.1f}x" if base and p50 else "-", "ok" if p50 <= TARGET_MS else "MISS"))  # fmt: skip
    elapsed = time.perf_counter() - t_start
    appender.stop()
    writer.flush()
    writer.submit(rollup.fold).result()
    total = cur.execute("SELECT count(*) FROM requests").fetchone()
    cubed = cur.execute("SELECT sum(calls) FROM cube_1h").fetchone()
    cur.close()
    writer.stop()
    store.close()
    load = (load_before, os.getloadavg()[0])
    achieved = appender.sent / elapsed if elapsed else 0.0
    print(f"\nrows {args.rows:,}  zone {args.tz}  runs {args.runs}  cube rows {sizes['cube_1h']:,}  histogram rows "
          f"{sizes['cube_hist_1h']:,}  " + "  ".join(f"{k} {v:.1f}" for k, v in setup.items()))  # fmt: skip
    print(f"machine load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
    print(f"appended meanwhile: {appender.sent:,} events ({achieved:,.0f}/s); cube == count(*): {cubed == total}\n")
    print(markdown_table(["shape (90 days)", "p50 ms", "min ms", "max ms", "raw p50 ms", "vs raw",
                          f"≤ {TARGET_MS:.0f} ms"], table))  # fmt: skip
    write_json(RESULTS / "explore.json", {"rows": args.rows, "tz": args.tz, "rate": args.rate, "achieved_rate": achieved,
                                          "setup": setup, "sizes": sizes, "load": load, "figures": figures})  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    missed = [f for f in figures if f["p50_ms"] > TARGET_MS]
    return 1 if missed or cubed != total else 0


if __name__ == "__main__":
    sys.exit(main())
