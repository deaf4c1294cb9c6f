"""The explore cube: exact hourly pre-aggregates over every low-cardinality dimension of `requests`.

Why: Explore slices any measure by any two dimensions (plus filters on the others); the stats rollup keeps one
dimension at a time, which cannot answer "model × client where surface = openai". The cube keeps, per UTC hour, one
row per combination of (model, project, client, surface, operation, stream, outcome, status) that occurred, with
exact counters, and a log-bucket histogram (same GAMMA as the rollup: percentiles within ±2 %) of latency and TTFB
per combination. Any query over those dimensions, any filters, and any time dimension of a whole-hour display zone
is a GROUP BY over it.

Not in the cube: `key` (1,000 keys would make it as large as the raw table) — queries that group or filter by key read
raw rows, as do the partial hours at the edges of a range and the time dimensions of zones with a 30/45-minute
offset (see `explore.py`).

Upstream 429s live in `attempts`; a request's attempts are recorded before the request itself (the relay records
the request when it ends), so when a batch of requests is folded every one of its attempts is already in the table:
the fold looks them up in the batch's time span. The rollup (`rollup.py`) owns the lifecycle: it calls `insert`,
`compact`, `trim` and `reset` here at the same points as for its own tables, on the writer thread.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from proxy_service.histogram import lb_sql

COUNTERS = "cube_1h"
HISTOGRAM = "cube_hist_1h"
DIMS = ("model", "project", "client", "surface", "operation", "stream", "outcome", "status")
# How each cube dimension is computed from a `requests` row ('' for NULL, so that it can be grouped and compared).
RAW_DIMS = {
    "model": "coalesce(model, '')",
    "project": "coalesce(project, '')",
    "client": "coalesce(client_id, '')",
    "surface": "coalesce(surface, '')",
    "operation": "coalesce(operation, '')",
    "stream": "coalesce(CAST(stream AS VARCHAR), '')",
    "outcome": "coalesce(outcome, '')",
    "status": "coalesce(CAST(status AS VARCHAR), '')",
}
SUMS = ("calls", "successes", "exhausted", "attempts", "upstream_429s", "prompt_tokens", "output_tokens",
        "thinking_tokens", "cached_tokens", "total_tokens", "request_bytes", "response_bytes", "latency_sum",
        "latency_n", "ttfb_sum", "ttfb_n")  # fmt: skip
# Per-row values of the counters, over `requests` aliased r and the upstream-429 lookup aliased u.
RAW_SUMS = {
    "calls": "1",
    "successes": "CAST(r.outcome = 'success' AS INTEGER)",
    "exhausted": "CAST(r.outcome = 'exhausted' AS INTEGER)",
    "attempts": "coalesce(r.attempts, 0)",
    "upstream_429s": "coalesce(u.n429, 0)",
    "prompt_tokens": "coalesce(r.prompt_tokens, 0)",
    "output_tokens": "coalesce(r.output_tokens, 0)",
    "thinking_tokens": "coalesce(r.thinking_tokens, 0)",
    "cached_tokens": "coalesce(r.cached_tokens, 0)",
    "total_tokens": "coalesce(r.total_tokens, 0)",
    "request_bytes": "coalesce(r.request_bytes, 0)",
    "response_bytes": "coalesce(r.response_bytes, 0)",
    "latency_sum": "coalesce(r.latency_ms, 0)",
    "latency_n": "CAST(r.latency_ms IS NOT NULL AS INTEGER)",
    "ttfb_sum": "coalesce(r.ttfb_ms, 0)",
    "ttfb_n": "CAST(r.ttfb_ms IS NOT NULL AS INTEGER)",
}
# A request's attempts end within this long after it started (the call deadline is far shorter).
ATTEMPT_SLACK = "INTERVAL 1 HOUR"


def upstream_429s_sql(lo: str, hi: str) -> str:
    """Per request id, its upstream 429 answers, for requests that started in [lo, hi) (SQL expressions)."""
    return (
        "SELECT request_id, count(*) AS n429 FROM attempts "
        f"WHERE ts >= {lo} AND ts < {hi} + {ATTEMPT_SLACK} AND upstream_status = 429 GROUP BY request_id"
    )


_DIM_COLS = ", ".join(f"{d} VARCHAR NOT NULL" for d in DIMS)
_DDL = [
    f"CREATE TABLE IF NOT EXISTS {COUNTERS} (bucket TIMESTAMP NOT NULL, {_DIM_COLS}, "
    + ", ".join(f"{s} {'DOUBLE' if s.endswith('_sum') else 'BIGINT'}" for s in SUMS)
    + ")",
    # metric: 'l' latency, 't' time to first byte.
    f"CREATE TABLE IF NOT EXISTS {HISTOGRAM} (bucket TIMESTAMP NOT NULL, {_DIM_COLS}, metric VARCHAR NOT NULL, "
    "lb SMALLINT NOT NULL, n BIGINT)",
]
_DIM_LIST = ", ".join(DIMS)
_BASE = f"""
    WITH src AS (SELECT * FROM {{source}}),
         span AS (SELECT min(ts) AS lo, max(ts) + INTERVAL 1 MICROSECOND AS hi FROM src),
         u AS ({upstream_429s_sql("(SELECT lo FROM span)", "(SELECT hi FROM span)")})
    SELECT time_bucket(INTERVAL 1 HOUR, r.ts) AS bucket,
           {", ".join(f"{expr} AS {d}" for d, expr in RAW_DIMS.items())},
           {", ".join(f"{expr} AS {s}" for s, expr in RAW_SUMS.items())},
           r.latency_ms, r.ttfb_ms
    FROM src r LEFT JOIN u USING (request_id)"""
_INSERT_COUNTERS = f"""
    INSERT INTO {COUNTERS}
    WITH base AS ({_BASE})
    SELECT bucket, {_DIM_LIST}, {", ".join(f"sum({s})" for s in SUMS)}
    FROM base GROUP BY ALL ORDER BY bucket"""
_INSERT_HISTOGRAM = f"""
    INSERT INTO {HISTOGRAM}
    WITH base AS ({_BASE})
    SELECT bucket, {_DIM_LIST}, 'l', {lb_sql("latency_ms")}, count(*) FROM base WHERE latency_ms IS NOT NULL
    GROUP BY ALL
    UNION ALL
    SELECT bucket, {_DIM_LIST}, 't', {lb_sql("ttfb_ms")}, count(*) FROM base WHERE ttfb_ms IS NOT NULL
    GROUP BY ALL
    ORDER BY 1"""
_IN_TOUCHED = "WHERE bucket BETWEEN ? AND ? AND list_contains(?, bucket)"


def install(cur: duckdb.DuckDBPyConnection) -> None:
    for ddl in _DDL:
        cur.execute(ddl)


def total_calls(cur: duckdb.DuckDBPyConnection) -> int:
    row = cur.execute(f"SELECT coalesce(sum(calls), 0) FROM {COUNTERS}").fetchone()
    return int(row[0]) if row else 0


def reset(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute(f"DELETE FROM {COUNTERS}")
    cur.execute(f"DELETE FROM {HISTOGRAM}")


def insert(cur: duckdb.DuckDBPyConnection, source: str) -> None:
    """Fold the rows of `source` (the `requests` table or a registered batch of it) into the cube."""
    cur.execute(_INSERT_COUNTERS.format(source=source))
    cur.execute(_INSERT_HISTOGRAM.format(source=source))


def compact(cur: duckdb.DuckDBPyConnection, hours: list[datetime]) -> None:
    """Merge the partial rows of the given hours (inside the caller's transaction)."""
    params = [hours[0], hours[-1], hours]
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE _cube_c AS SELECT bucket, {_DIM_LIST}, "
        + ", ".join(f"sum({s})::{'DOUBLE' if s.endswith('_sum') else 'BIGINT'}" for s in SUMS)
        + f" FROM {COUNTERS} {_IN_TOUCHED} GROUP BY ALL",
        params,
    )
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE _cube_h AS SELECT bucket, {_DIM_LIST}, metric, lb, sum(n)::BIGINT "
        f"FROM {HISTOGRAM} {_IN_TOUCHED} GROUP BY ALL",
        params,
    )
    try:
        cur.execute(f"DELETE FROM {COUNTERS} {_IN_TOUCHED}", params)
        cur.execute(f"DELETE FROM {HISTOGRAM} {_IN_TOUCHED}", params)
        cur.execute(f"INSERT INTO {COUNTERS} SELECT * FROM _cube_c")
        cur.execute(f"INSERT INTO {HISTOGRAM} SELECT * FROM _cube_h")
    finally:
        cur.execute("DROP TABLE IF EXISTS _cube_c")
        cur.execute("DROP TABLE IF EXISTS _cube_h")


def trim(cur: duckdb.DuckDBPyConnection, before: datetime) -> None:
    cur.execute(f"DELETE FROM {COUNTERS} WHERE bucket < ?", [before])
    cur.execute(f"DELETE FROM {HISTOGRAM} WHERE bucket < ?", [before])
