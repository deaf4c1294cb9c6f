"""Explore answers on a big events table while the writer keeps appending.

Generates N synthetic `requests` rows in SQL (~90 days ending now, 1,000 keys in 40 projects, 5 models, 50 clients),
builds the rollup and the explore pre-aggregates from them exactly as a proxy's background rebuild does (one local
day per chunk; the time is reported), then starts the real EventWriter with the rollup hook and the analytics
bench's appender (`--rate` events/s), and times `explore.answer` — what `POST /admin/api/explore` runs after
folding — for measures × two dimensions over the whole 90 days in a DST zone: p50 of `--runs`, each run = fold +
answer. Baseline: the same shapes from raw rows only (zone=None, as while rebuilding), in the same run.

Two kinds of traffic (`--traffic`, both by default):
- `realistic` (the gated figures): a client calls from one surface, mostly streams or mostly not, and uses one or
  two models; a few clients make most of the calls; keys belong to projects and rotate; latency and errors depend
  on the model;
- `independent` (the adversarial case, reported): every field drawn independently, so every combination of every
  dimension occurs every hour.

    python -m bench.explore [--rows 10000000] [--runs 7] [--rate 2000] [--tz America/New_York] [--traffic both]
    python -m bench.explore --pairs --runs 3 --no-baseline ...   # every dimension and pair, slowest first

Target: p50 ≤ 1 s for every shape on 2 cores, with the writer busy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.analytics import GENERATE, MODELS, Appender, timed
from bench.common import RESULTS, markdown_table, write_json
from proxy_service.analytics import explore, preagg
from proxy_service.analytics.rollup import Rollup
from proxy_service.app import COMPACT_TICK_S
from proxy_service.events import EventWriter
from proxy_service.store import DERIVED, Store

# Correlated fields: client c (skewed: low ids call most) has a surface, a streaming habit and one or two models;
# the key rotates over 1,000 keys of 40 projects; latency and errors follow the model.
REALISTIC = """
INSERT INTO requests BY NAME
SELECT ts, request_id, 'c' || c AS client_id, CASE WHEN c % 5 = 0 THEN 'openai' ELSE 'gemini' END AS surface,
       CASE WHEN c % 7 = 0 THEN 'embedContent' ELSE 'generateContent' END AS operation, list_extract(?, 1 + m) AS model,
       (c % 3 = 0) = ((h >> 11) % 10 <> 0) AS stream,
       CAST(CASE WHEN r < 90 - m THEN 200 WHEN r < 97 THEN 429 WHEN r < 99 THEN 503 ELSE 400 END AS SMALLINT) AS status,
       CASE WHEN r < 90 - m THEN 'success' WHEN r < 97 THEN 'exhausted' WHEN r < 99 THEN 'upstream_error'
            ELSE 'client_error' END AS outcome,
       CAST(1 + (h >> 40) % 2 AS SMALLINT) AS attempts,
       'k_' || lpad(CAST(k AS VARCHAR), 12, '0') AS key_id, 'p' || (k % 40) AS project,
       CAST((150 + 250 * m) * (1 + ((h >> 24) % 1000) / 400.0)
            + CASE WHEN (h >> 50) % 20 = 0 THEN (h >> 30) % 57000 ELSE 0 END AS DOUBLE) AS latency_ms,
       CAST(50 + 30 * m + (h >> 33) % 400 AS DOUBLE) AS ttfb_ms,
       CAST((h >> 14) % 4000 AS INTEGER) AS prompt_tokens, CAST((h >> 26) % 1200 AS INTEGER) AS output_tokens,
       0 AS thinking_tokens, 0 AS cached_tokens,
       CAST((h >> 14) % 4000 + (h >> 26) % 1200 AS INTEGER) AS total_tokens,
       1200 AS request_bytes, 3400 AS response_bytes
FROM (
    SELECT *, CAST(CASE WHEN (h >> 44) % 5 = 0 THEN (c + 1) % 5 ELSE c % 5 END AS INTEGER) AS m
    FROM (
        SELECT ? - to_microseconds(CAST((? - i) * ? AS BIGINT)) AS ts, 'r' || i AS request_id, hash(i) AS h,
               CAST(hash(i) % 100 AS INTEGER) AS r, CAST((hash(i) >> 16) % 1000 AS INTEGER) AS k,
               CAST(floor(50 * pow(((hash(i) >> 52) % 1000) / 1000.0, 2)) AS INTEGER) AS c
        FROM range(?) t(i)
    )
)"""
TRAFFIC = {"realistic": REALISTIC, "independent": GENERATE.format(clients=50)}


def build(path: Path, rows: int, end: datetime, traffic: str, tz: str) -> dict[str, float]:
    store = Store(path)
    cur = store.cursor()
    t0 = time.perf_counter()
    step_us = 90 * 86400 * 1_000_000 // max(rows, 1)
    cur.execute(TRAFFIC[traffic], [MODELS, end, rows, step_us, rows])
    for table, derived in DERIVED.items():  # what the store derives as the writer appends (the latency buckets)
        for col, (_, expr) in derived.items():
            cur.execute(f"UPDATE {table} SET {col} = {expr}")
    generated = time.perf_counter() - t0
    t0 = time.perf_counter()
    Rollup(tz).install(cur)  # the chunks of a background rebuild, run back to back
    rolled = time.perf_counter() - t0
    cur.execute("CHECKPOINT")
    cur.close()
    store.close()
    return {"generate_s": generated, "rebuild_s": rolled}


TARGET_MS = 1000.0
# (name, body): every shape is over the whole 90 days.
SHAPES: list[tuple[str, dict[str, Any]]] = [
    ("calls, tokens by model × client", {"measures": ["calls", "total_tokens"], "dimensions": ["model", "client"]}),
    ("p95 latency by model × client", {"measures": ["calls", "p95_latency_ms"], "dimensions": ["model", "client"]}),
    ("success rate by project × status", {"measures": ["success_rate"], "dimensions": ["project", "status"]}),
    ("p95 by hour of day × weekday", {"measures": ["p95_latency_ms"], "dimensions": ["hour_of_day", "day_of_week"]}),
    (
        "calls, p95 by day × client (top 10)",
        {"measures": ["calls", "p95_latency_ms"], "dimensions": ["day", "client"], "top_n": 10},
    ),
    (
        "429s by surface × outcome, compare",
        {
            "measures": ["exhausted", "upstream_429s"],
            "dimensions": ["surface", "outcome"],
            "compare": "previous_period",
        },
    ),
    (
        "calls by model, filtered to 2 clients",
        {
            "measures": ["calls", "p50_latency_ms"],
            "dimensions": ["model"],
            "filters": {"client": ["c1", "c2"], "stream": [True]},
        },
    ),
    ("calls by key (top 20)", {"measures": ["calls", "success_rate"], "dimensions": ["key"], "top_n": 20}),
    ("calls by hour × model", {"measures": ["calls", "error_rate"], "dimensions": ["hour", "model"]}),
    (
        "calls by key × model (top 20)",
        {"measures": ["calls", "success_rate"], "dimensions": ["key", "model"], "top_n": 20},
    ),
    ("calls by hour × key (top 10)", {"measures": ["calls"], "dimensions": ["hour", "key"], "top_n": 10}),
    ("p95 by key × status (top 20)", {"measures": ["p95_latency_ms"], "dimensions": ["key", "status"], "top_n": 20}),
    (
        "calls, p95 by day × key (top 10)",
        {"measures": ["calls", "p95_latency_ms"], "dimensions": ["day", "key"], "top_n": 10},
    ),
    (
        "calls by key × client (top 10)",
        {"measures": ["calls", "total_tokens"], "dimensions": ["key", "client"], "top_n": 10},
    ),
    (
        "calls, p95 by key × outcome (top 10)",
        {"measures": ["calls", "p95_latency_ms"], "dimensions": ["key", "outcome"], "top_n": 10},
    ),
]
# --pairs: every dimension alone and every pair, with calls and p95 latency; top 10 where a dimension has more
# values than a table can show (key 1,000, client 50, project 40).
WIDE = {"key", "client", "project"}


def pair_shapes() -> list[tuple[str, dict[str, Any]]]:
    dims = explore.DIMENSIONS
    sets = [(d,) for d in dims] + [(a, b) for i, a in enumerate(dims) for b in dims[i + 1 :]]
    return [
        (
            " × ".join(s) + (" (top 10)" if WIDE & set(s) else ""),
            {
                "measures": ["calls", "p95_latency_ms"],
                "dimensions": list(s),
                **({"top_n": 10} if WIDE & set(s) else {}),
            },
        )
        for s in sets
    ]


def measure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Time every shape on the file at `path` (writer appending meanwhile); the figures of one kind of traffic."""
    store = Store(path)
    writer = EventWriter(store)
    rollup = Rollup(args.tz)
    cur0 = store.cursor()
    rollup.install(cur0)  # no-op when the file was built for this zone and version
    writer.after_append.append(rollup.on_append)
    writer.start()
    # A kept file holds the partial rows its earlier runs folded: merge them, then compact as the gateway does.
    rollup.touch(datetime.now(UTC).replace(tzinfo=None) - timedelta(days=2), datetime.now(UTC).replace(tzinfo=None))
    writer.submit(rollup.compact).result()
    sizes = {
        t: cur0.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
        for t in ("requests", "preagg", "preagg_hist")
    }
    cur0.close()
    stop = threading.Event()

    def compactor() -> None:
        while not stop.wait(COMPACT_TICK_S):
            writer.submit(rollup.compact).result()

    threading.Thread(target=compactor, daemon=True).start()
    appender = Appender(writer, args.rate)
    appender.start()
    cur = store.cursor()
    tz = ZoneInfo(args.tz)
    now = datetime.now(UTC).replace(tzinfo=None)
    frm = (now - timedelta(days=90)).isoformat()

    def run(body: dict[str, Any], pre: bool) -> Any:
        spec, _ = explore.parse_spec({**body, "from": frm, "to": now.isoformat()}, tz, now)
        writer.submit(rollup.fold).result()  # what the admin API does before reading
        return explore.answer(cur, spec, tz, zone=rollup.zone if pre else None)

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    figures = []
    for name, body in pair_shapes() if args.pairs else SHAPES:
        if args.only and not any(o in name for o in args.only):
            continue
        try:
            ms = sorted(timed(lambda b=body: run(b, True), args.runs))  # type: ignore[misc]
            source = run(body, True).source
        except explore.ExploreError as e:  # e.g. more rows than an answer may have: a 400, answered at once
            print(f"{name}: 400 {e}", file=sys.stderr)
            continue
        raw = [] if args.no_baseline else sorted(timed(lambda b=body: run(b, False), max(1, args.runs // 3)))  # type: ignore[misc]
        figures.append(
            {
                "query": name,
                "p50_ms": statistics.median(ms),
                "min_ms": ms[0],
                "max_ms": ms[-1],
                "raw_p50_ms": statistics.median(raw) if raw else None,
                "source": source,
            }
        )
    elapsed = time.perf_counter() - t_start
    stop.set()
    appender.stop()
    writer.flush()
    writer.submit(rollup.fold).result()
    total = cur.execute("SELECT count(*) FROM requests").fetchone()
    kept = cur.execute("SELECT sum(calls) FROM preagg WHERE a = '' GROUP BY grain").fetchall()
    cur.close()
    writer.stop()
    store.close()
    return {
        "sizes": sizes,
        "load": (load_before, os.getloadavg()[0]),
        "figures": figures,
        "achieved_rate": appender.sent / elapsed if elapsed else 0.0,
        "appended": appender.sent,
        "exact": all(k == total for k in kept) and len(kept) == len(preagg.GRAINS),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s appended while measuring")
    ap.add_argument("--tz", default="America/New_York")
    ap.add_argument("--traffic", choices=["both", *TRAFFIC], default="both")
    ap.add_argument("--keep", type=Path, default=None, help="keep/reuse the files in this directory")
    ap.add_argument("--no-baseline", action="store_true", help="skip the raw-rows baseline (slow on 10M rows)")
    ap.add_argument(
        "--pairs",
        action="store_true",
        help="time every dimension and pair of dimensions (calls + p95 latency) instead of the shapes, slowest first",
    )
    ap.add_argument("--only", action="append", help="time only the shapes whose name contains this (repeatable)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="keyrack-bench-") if args.keep is None else None
    directory = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    directory.mkdir(parents=True, exist_ok=True)
    end = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    out: dict[str, Any] = {"rows": args.rows, "tz": args.tz, "rate": args.rate, "runs": args.runs, "traffic": {}}
    ok = True
    for traffic in TRAFFIC if args.traffic == "both" else (args.traffic,):
        path = directory / f"{traffic}-{args.rows}.duckdb"
        setup: dict[str, float] = {}
        if not path.exists():
            print(f"building {args.rows:,} rows of {traffic} traffic in {path} ...", file=sys.stderr)
            setup = build(path, args.rows, end, traffic, args.tz)
        got = {**measure(path, args), "setup": setup}
        out["traffic"][traffic] = got
        sizes, load = got["sizes"], got["load"]
        print(
            f"\n{traffic} traffic: rows {args.rows:,}  zone {args.tz}  runs {args.runs}  pre-aggregate rows "
            f"{sizes['preagg']:,} (histograms {sizes['preagg_hist']:,})  "
            + "  ".join(f"{k} {v:.1f}" for k, v in setup.items())
        )
        print(f"machine load average (1 min) before / after: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores")
        print(
            f"appended meanwhile: {got['appended']:,} events ({got['achieved_rate']:,.0f}/s); "
            f"pre-aggregates == count(*): {got['exact']}\n"
        )
        table = [
            (
                f["query"],
                f["p50_ms"],
                f["min_ms"],
                f["max_ms"],
                f["source"],
                f"{f['raw_p50_ms']:,.0f}" if f["raw_p50_ms"] else "-",
                f"{f['raw_p50_ms'] / f['p50_ms']:.1f}x" if f["raw_p50_ms"] and f["p50_ms"] else "-",
                "ok" if f["p50_ms"] <= TARGET_MS else "MISS",
            )
            for f in (sorted(got["figures"], key=lambda f: -f["p50_ms"]) if args.pairs else got["figures"])
        ]
        print(
            markdown_table(
                [
                    "shape (90 days)",
                    "p50 ms",
                    "min ms",
                    "max ms",
                    "source",
                    "raw p50 ms",
                    "vs raw",
                    f"≤ {TARGET_MS:.0f} ms",
                ],
                table,
            )
        )
        ok = ok and got["exact"] and (traffic != "realistic" or all(f["p50_ms"] <= TARGET_MS for f in got["figures"]))
    write_json(RESULTS / ("explore-pairs.json" if args.pairs else "explore.json"), out)
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
