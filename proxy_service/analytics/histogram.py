"""Log-bucket latency histograms, shared by every reader of the pre-aggregates and of raw rows.

A value v falls in bucket lb = ceil(ln(v) / ln(GAMMA)); reading a bucket back as 2·GAMMA^lb/(GAMMA+1) is within
±2 % (GAMMA = 1.04) of every value in it, so a nearest-rank percentile read from the histogram is within ±2 % of the
exact one, and histograms add up exactly across buckets, dimensions and time.
"""

from __future__ import annotations

from typing import Any

import duckdb

GAMMA = 1.04


def lb_sql(col: str) -> str:
    """The bucket of a numeric SQL expression (values ≤ 0.01 share the lowest bucket)."""
    return f"CAST(ceil(ln(greatest({col}, 0.01)) / ln({GAMMA})) AS SMALLINT)"


def percentiles(
    cur: duckdb.DuckDBPyConnection, hist: str, params: list[Any], qs: tuple[float, ...], keys: tuple[str, ...]
) -> dict[tuple[Any, ...], tuple[float | None, ...]]:
    """Nearest-rank quantiles per group of a histogram query `hist` (columns `keys`, which identify a group, then
    lb and n; one row per cell): the one read-back of p50/p95 for the stats, Explore and alert backtests. Computed in
    DuckDB (a running count per group, the first cell that reaches q·total), so only one row per group comes back
    to Python, and the proxy loads no numpy for it."""
    by = ", ".join(keys)
    picks = ", ".join(
        f"2 * pow({GAMMA}, min(lb) FILTER (WHERE cum >= greatest(? * total, 1e-9) - 1e-9)) / {GAMMA + 1}" for _ in qs
    )
    sql = (
        f"WITH _cells AS ({hist}), c AS (SELECT {by}, lb, sum(n) OVER (PARTITION BY {by} ORDER BY lb ROWS BETWEEN "
        f"UNBOUNDED PRECEDING AND CURRENT ROW) AS cum, sum(n) OVER (PARTITION BY {by}) AS total FROM _cells) "
        f"SELECT {by}, {picks} FROM c GROUP BY {by}"
    )
    k = len(keys)
    return {tuple(r[:k]): tuple(r[k:]) for r in cur.execute(sql, [*params, *qs]).fetchall()}
