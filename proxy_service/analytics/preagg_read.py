"""The one reader of the pre-aggregates (`preagg.py`): every read of their tables goes through here.

Trends/stats (`queries.aggregate`) and Explore (`explore.py`) take the FROM ... WHERE of one grain and set from
`scan` and add their bucket expressions and ranges; forecasts (`hourly_calls`), alert backtests and the alert
engine's served models, and the client listing read whole answers here. Readers always SUM (several rows may exist
per key between compactions).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from proxy_service.analytics.histogram import percentiles
from proxy_service.analytics.preagg import COUNTERS, DAY, HISTOGRAM, HOUR, QUARTER, TIERS, set_of

MAX_SERVED = 1000


def scan(grain: str, dims: set[str], histogram: str | None = None) -> tuple[str, str, list[Any]]:
    """(table, condition, params) selecting the rows of `grain` for the set `dims`: counters, or with `histogram`
    ('l' latency, 't' TTFB) that metric's histogram. The condition leads with the columns the tables are sorted by,
    so that DuckDB skips the other sets' row groups."""
    a, b = set_of(dims)
    if histogram is None:
        return COUNTERS, "grain = ? AND a = ? AND b = ?", [grain, a, b]
    return HISTOGRAM, "grain = ? AND a = ? AND b = ? AND metric = ?", [grain, a, b, histogram]


def tier(seconds: int) -> str:
    """The grain of a UTC tier given its length (900 or 3600 seconds)."""
    return TIERS[seconds]


def hourly_calls(cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> list[tuple[datetime, str, int]]:
    """Calls per UTC hour in [lo, hi) per model, and the total as model '' (a forecast over 90 days never scans the
    raw rows). Hours without calls are absent."""
    rows = cur.execute(
        f"SELECT bucket, av, CAST(sum(calls) AS BIGINT) FROM {COUNTERS} WHERE grain = ? AND a IN ('', 'model') "
        "AND b = '' AND bucket >= ? AND bucket < ? GROUP BY ALL ORDER BY 1",
        [HOUR, lo, hi],
    ).fetchall()
    return [(bucket, val, int(n)) for bucket, val, n in rows]


def served_models(cur: duckdb.DuckDBPyConnection, lo: datetime) -> list[str]:
    """Models with a success since `lo` (a success is an answer upstream served, so the caller held a token)."""
    sql = (
        f"SELECT DISTINCT av FROM {COUNTERS} WHERE grain = ? AND a = 'model' AND b = '' AND successes > 0 "
        "AND bucket >= ? LIMIT ?"
    )
    return [m for (m,) in cur.execute(sql, [HOUR, lo, MAX_SERVED]).fetchall() if m]


def client_calls(cur: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[str, int]]:
    """Calls per client id since `since` (whole local days: a listing, not an exact figure)."""
    rows = cur.execute(
        f"SELECT av, CAST(sum(calls) AS BIGINT) FROM {COUNTERS} WHERE grain = ? AND a = 'client' AND b = '' "
        "AND bucket >= ? AND av <> '' GROUP BY av",
        [DAY, since],
    ).fetchall()
    return [(str(c), int(n)) for c, n in rows]


# -- alert backtests: 15-minute buckets ----------------------------------------------------------------------------
_BACKTEST_COUNTERS = f"""
    SELECT bucket, CAST(sum(calls) AS BIGINT) AS calls, CAST(sum(successes) AS BIGINT) AS successes
    FROM {COUNTERS} WHERE grain = '{QUARTER}' AND a = ? AND b = '' AND av = ? AND bucket >= ? AND bucket < ?
    GROUP BY bucket ORDER BY bucket"""
_BACKTEST_EXHAUSTED = f"""
    SELECT bucket, CAST(sum(calls) AS BIGINT) AS calls FROM {COUNTERS}
    WHERE grain = '{QUARTER}' AND a = 'status' AND b = '' AND av = '429' AND bucket >= ? AND bucket < ?
    GROUP BY bucket"""
_BACKTEST_LATENCY = f"""
    SELECT bucket, lb, CAST(sum(n) AS DOUBLE) AS n FROM {HISTOGRAM}
    WHERE grain = '{QUARTER}' AND a = ? AND b = '' AND metric = 'l' AND av = ? AND bucket >= ? AND bucket < ?
    GROUP BY bucket, lb ORDER BY bucket, lb"""


def _set_name(dim: str) -> str:
    """A stats dimension as a set name ('all': the total)."""
    return "" if dim == "all" else dim


def backtest_counters(
    cur: duckdb.DuckDBPyConnection, dim: str, val: str, lo: datetime, hi: datetime
) -> list[tuple[datetime, int, int]]:
    """(bucket, calls, successes) per 15-minute bucket with traffic; `dim` 'all' (val '') or a stats dimension."""
    return cur.execute(_BACKTEST_COUNTERS, [_set_name(dim), val, lo, hi]).fetchall()


def backtest_exhausted(cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> dict[datetime, int]:
    """Calls answered 429 per bucket (Keyrack's own refusals; the status dimension has no model split)."""
    return dict(cur.execute(_BACKTEST_EXHAUSTED, [lo, hi]).fetchall())


def backtest_latency(
    cur: duckdb.DuckDBPyConnection, dim: str, val: str, lo: datetime, hi: datetime
) -> list[tuple[datetime, int, float]]:
    return cur.execute(_BACKTEST_LATENCY, [_set_name(dim), val, lo, hi]).fetchall()


def backtest_p95(
    cur: duckdb.DuckDBPyConnection, dim: str, val: str, lo: datetime, hi: datetime
) -> list[tuple[datetime, float | None]]:
    """p95 latency per 15-minute bucket, read back from the histogram cells `backtest_latency` returns."""
    found = percentiles(cur, _BACKTEST_LATENCY, [_set_name(dim), val, lo, hi], (0.95,), ("bucket",))
    return sorted((b, v[0]) for (b,), v in found.items())
