"""Analytics SQL for the pool-wide views: the 429 story over time, the (key, model) pairs in recent use, and the
distinct values the error-log filters offer. Parameterised, like everything in `queries.py`, whose bucketing
(local buckets of naive-UTC times) these reuse."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import duckdb

from proxy_service.analytics import queries
from proxy_service.analytics.answers import ResultTable

FACETS = ("model", "status", "error_type", "key_id")


def outcomes(cur: duckdb.DuckDBPyConnection, g: str, tz: ZoneInfo, lo: datetime, hi: datetime) -> ResultTable:
    """Rows {bucket (local start, tz-aware), group, n} in long form, where group is
    "outcome:<outcome>" (calls by how they ended: success, exhausted = Keyrack refused, upstream_error, ...),
    "status:<http status>" (what the client got), "attempts" (upstream attempts) and "upstream_429"
    (attempts Google answered 429). Attempts per success and refusals vs upstream 429s follow from these."""

    offs = queries.offsets(tz, lo, hi)
    b_req, p_req = queries._bucket_sql("ts", g, offs)
    b_att, p_att = queries._bucket_sql("ts", g, offs)
    sql = f"""
        SELECT {b_req} AS bucket, 'outcome:' || coalesce(outcome, '') AS "group", count(*) AS n
        FROM requests WHERE ts >= ? AND ts < ? GROUP BY ALL
        UNION ALL
        SELECT {b_req} AS bucket, 'status:' || coalesce(CAST(status AS VARCHAR), '') AS "group", count(*) AS n
        FROM requests WHERE ts >= ? AND ts < ? GROUP BY ALL
        UNION ALL
        SELECT {b_att} AS bucket, 'attempts' AS "group", count(*) AS n
        FROM attempts WHERE ts >= ? AND ts < ? GROUP BY ALL
        UNION ALL
        SELECT {b_att} AS bucket, 'upstream_429' AS "group", count(*) AS n
        FROM attempts WHERE ts >= ? AND ts < ? AND upstream_status = 429 GROUP BY ALL
        ORDER BY bucket, "group"
    """
    params: list[Any] = [*p_req, lo, hi, *p_req, lo, hi, *p_att, lo, hi, *p_att, lo, hi]
    return queries._localise(ResultTable.fetch(cur.execute(sql, params)), tz)


def recent_key_models(cur: duckdb.DuckDBPyConnection, since: datetime) -> list[tuple[str, str]]:
    """(key id, model) pairs that carried calls since `since` (naive UTC)."""
    rows = cur.execute(
        "SELECT DISTINCT key_id, model FROM requests WHERE ts >= ? AND key_id IS NOT NULL AND model IS NOT NULL",
        [since],
    ).fetchall()
    return [(str(k), str(m)) for k, m in rows]


def error_facets(
    cur: duckdb.DuckDBPyConnection, lo: datetime | None, hi: datetime | None, limit: int
) -> dict[str, list[dict[str, Any]]]:
    """For each filterable column of the error logs, its values in [lo, hi) with counts, most frequent first."""
    where, params = ["TRUE"], []
    if lo is not None:
        where.append("ts >= ?")
        params.append(lo)
    if hi is not None:
        where.append("ts < ?")
        params.append(hi)
    out: dict[str, list[dict[str, Any]]] = {}
    for column in FACETS:  # a fixed tuple of column names: nothing from the request reaches the SQL text
        rows = cur.execute(
            f"SELECT {column} AS value, count(*) AS n FROM error_logs WHERE {' AND '.join(where)} "
            f"AND {column} IS NOT NULL GROUP BY ALL ORDER BY n DESC, value LIMIT ?",
            [*params, limit],
        ).fetchall()
        out[column] = [{"value": v, "count": n} for v, n in rows]
    return out
