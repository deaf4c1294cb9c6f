"""The alerting SQL, parameterised: window figures for live evaluation.

Live figures count the calls of authenticated clients only: a refused tokenless call says nothing about the pool's
health, and anyone can send one (`unauthorized` calls carry no client id).

Live evaluation reads only the rows of its window: `ts >= now - window` is pruned by DuckDB's per-row-group min/max
(zone maps) on these append-ordered tables, so the cost follows the window's rows, never the table's size. Rules
sharing (window, filters, grouping) share one query. Backtests read the 15-minute pre-aggregates through
`analytics/preagg_read.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

# filter / group name → column; only these identifiers are ever put into SQL text
REQUEST_COLUMNS = {"model": "model", "project": "project", "key": "key_id", "client": "client_id", "surface": "surface"}
ATTEMPT_COLUMNS = {"model": "model", "project": "project", "key": "key_id"}
WEEK = timedelta(days=7)

_REQUESTS = """
    SELECT {group} AS g, count(*) AS calls,
           count(*) FILTER (WHERE outcome = 'success') AS success,
           count(*) FILTER (WHERE outcome = 'upstream_error') AS upstream_error,
           count(*) FILTER (WHERE outcome = 'exhausted') AS exhausted,
           count(*) FILTER (WHERE outcome = 'stream_error') AS stream_error,
           count(*) FILTER (WHERE outcome = 'client_error') AS client_error,
           avg(attempts) AS attempts_per_call,
           quantile_cont(latency_ms, 0.95) AS p95_latency_ms,
           quantile_cont(ttfb_ms, 0.95) FILTER (WHERE stream) AS p95_ttft_ms,
           coalesce(sum(cost_usd), 0) AS spend_usd
    FROM requests WHERE ts >= ? AND ts < ? AND client_id IS NOT NULL{where} GROUP BY ALL"""
_ATTEMPTS = """
    SELECT {group} AS g, count(*) AS attempts,
           count(*) FILTER (WHERE outcome = 'rate_limited' OR upstream_status = 429) AS rate_limited
    FROM attempts WHERE ts >= ? AND ts < ?{where} GROUP BY ALL"""
_VOLUME = """
    SELECT {group} AS g, count(*) FILTER (WHERE ts >= ?) AS now_calls, count(*) FILTER (WHERE ts < ?) AS then_calls
    FROM requests WHERE ((ts >= ? AND ts < ?) OR (ts >= ? AND ts < ?)) AND client_id IS NOT NULL{where} GROUP BY ALL"""
_SERVED = """
    SELECT DISTINCT model FROM requests
    WHERE ts >= ? AND ts < ? AND outcome = 'success' AND client_id IS NOT NULL AND model IS NOT NULL LIMIT ?"""
MAX_SERVED = 1000


def _where(filters: dict[str, str], columns: dict[str, str]) -> tuple[str, list[Any]]:
    parts, params = [], []
    for name, value in sorted(filters.items()):
        parts.append(f" AND {columns[name]} = ?")
        params.append(value)
    return "".join(parts), params


def _group(group_by: str, columns: dict[str, str]) -> str:
    return f"coalesce({columns[group_by]}, '')" if group_by else "''"


def request_window(
    cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime, filters: dict[str, str], group_by: str
) -> dict[str, dict[str, Any]]:
    """Per group value ('' when ungrouped): calls, counts per outcome class, attempts per call, p95s."""
    where, params = _where(filters, REQUEST_COLUMNS)
    sql = _REQUESTS.format(group=_group(group_by, REQUEST_COLUMNS), where=where)
    return _rows(cur.execute(sql, [lo, hi, *params]))


def attempt_window(
    cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime, filters: dict[str, str], group_by: str
) -> dict[str, dict[str, Any]]:
    where, params = _where(filters, ATTEMPT_COLUMNS)
    sql = _ATTEMPTS.format(group=_group(group_by, ATTEMPT_COLUMNS), where=where)
    return _rows(cur.execute(sql, [lo, hi, *params]))


def volume_window(
    cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime, filters: dict[str, str], group_by: str
) -> dict[str, dict[str, Any]]:
    """Calls in [lo, hi) and in the same span one week earlier."""
    where, params = _where(filters, REQUEST_COLUMNS)
    sql = _VOLUME.format(group=_group(group_by, REQUEST_COLUMNS), where=where)
    return _rows(cur.execute(sql, [lo, lo, lo, hi, lo - WEEK, hi - WEEK, *params]))


def served_models(cur: duckdb.DuckDBPyConnection, lo: datetime, hi: datetime) -> list[str]:
    """Models upstream served to an authenticated client in [lo, hi) (they exist: `known_models`)."""
    return [m for (m,) in cur.execute(_SERVED, [lo, hi, MAX_SERVED]).fetchall()]


def _rows(rel: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    names = [d[0] for d in rel.description]
    return {row[0]: dict(zip(names, row, strict=True)) for row in rel.fetchall()}
