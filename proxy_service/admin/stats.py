"""Admin API: statistics (summary windows, time series, top keys or models), as JSON or Arrow.

While the pre-aggregates are rebuilt (an upgrade, a display-zone change) the answers are still exact, read from the
raw rows (slower); `rebuilding` says so with the share done (0..1): a JSON field, or the `x-keyrack-rebuilding`
header of an Arrow answer; absent otherwise (as Explore's). `/stats/outcomes` always reads raw rows: no flag.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import arrow_response, iso, ok, q_choice, q_int, q_time, rollup_ready
from proxy_service.analytics import pool_queries, queries
from proxy_service.analytics.answers import ResultTable
from proxy_service.errors import ApiError
from proxy_service.store import utcnow

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

_BUCKET_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}


def _tz(gw: Gateway) -> ZoneInfo:
    return ZoneInfo(gw.config.display_timezone)


def _rebuilding(progress: float | None) -> dict[str, float]:
    return {} if progress is None else {"rebuilding": progress}


def _headers(meta: dict[str, Any]) -> dict[str, str]:
    return {f"x-keyrack-{k.replace('_', '-')}": str(v) for k, v in meta.items()}


async def stats_summary(gw: Gateway, _request: Request) -> Response:
    tz, now, (usable, progress) = _tz(gw), utcnow(), await rollup_ready(gw)
    windows = await gw.read_stats(lambda cur, src: queries.summary(cur, tz, now, usable, src))
    return ok(
        {
            "windows": windows,
            "spend": queries.spend_outlook(windows, tz, now),
            "keys": gw.pool.counts(),
            "timezone": tz.key,
            "generated_at": iso(now),
            **_rebuilding(progress),
        }
    )


async def stats_series(gw: Gateway, request: Request) -> Response:
    g = q_choice(request, "granularity", queries.GRANULARITIES, "day")
    group_by = q_choice(request, "group_by", queries.GROUP_BYS, "none")
    fmt = q_choice(request, "format", ("json", "arrow"), "json")
    limit = q_int(request, "limit", 10, 1, 100)
    start, end = q_time(request, "from"), q_time(request, "to")
    if start and end and start >= end:
        raise ApiError(400, "from must be before to", "from", reason="range_reversed")
    tz, now, (usable, progress) = _tz(gw), utcnow(), await rollup_ready(gw)
    lo, hi = queries.series_range(g, tz, start, end, now)
    if (hi - lo).total_seconds() / _BUCKET_SECONDS[g] > queries.MAX_BUCKETS:
        raise ApiError(
            400,
            f"too many {g} buckets in that range (max {queries.MAX_BUCKETS}): use a coarser granularity",
            reason="too_many_buckets",
        )
    table = await gw.read_stats(
        lambda cur, src: queries.series(cur, g, group_by, tz, lo, hi, use_rollup=usable, limit=limit, source=src)
    )
    meta: dict[str, Any] = {"granularity": g, "group_by": group_by, "timezone": tz.key, "from": iso(lo), "to": iso(hi)}
    meta |= _rebuilding(progress)
    if fmt == "arrow":
        return arrow_response(table, _headers(meta))
    rows = table.rows()
    for r in rows:  # the local start with its UTC offset, e.g. 2026-03-08T00:00:00-05:00
        r["bucket"] = r["bucket"].isoformat()
    return ok({**meta, "rows": rows})


async def stats_top(gw: Gateway, request: Request) -> Response:
    dim = q_choice(request, "dim", ("key", "model"), "key")
    limit = q_int(request, "limit", 10, 1, 100)
    end = q_time(request, "to") or utcnow()
    start = q_time(request, "from") or end - timedelta(hours=24)
    if start >= end:
        raise ApiError(400, "from must be before to", "from", reason="range_reversed")
    usable, progress = await rollup_ready(gw)
    items = await gw.read_stats(lambda cur, src: queries.top(cur, dim, start, end, limit, usable, src))
    if dim == "key":
        for item in items:
            key = gw.pool.keys.get(item["name"] or "")
            item["label"], item["project"] = (key.label, key.project) if key else (None, None)
    if q_choice(request, "format", ("json", "arrow"), "json") == "arrow":
        table = ResultTable.from_rows(items, empty={"name": "string"})
        return arrow_response(table, _headers(_rebuilding(progress)))
    return ok({"dim": dim, "from": iso(start), "to": iso(end), "items": items, **_rebuilding(progress)})


async def stats_outcomes(gw: Gateway, request: Request) -> Response:
    """The 429 story per bucket (Arrow): outcomes, client statuses, upstream attempts and upstream 429s."""
    g = q_choice(request, "granularity", queries.GRANULARITIES, "day")
    start, end = q_time(request, "from"), q_time(request, "to")
    if start and end and start >= end:
        raise ApiError(400, "from must be before to", "from", reason="range_reversed")
    tz, now = _tz(gw), utcnow()
    lo, hi = queries.series_range(g, tz, start, end, now)
    if (hi - lo).total_seconds() / _BUCKET_SECONDS[g] > queries.MAX_BUCKETS:
        raise ApiError(
            400,
            f"too many {g} buckets in that range (max {queries.MAX_BUCKETS}): use a coarser granularity",
            reason="too_many_buckets",
        )
    table = await gw.read(lambda cur: pool_queries.outcomes(cur, g, tz, lo, hi))
    return arrow_response(table, {"x-keyrack-granularity": g, "x-keyrack-timezone": tz.key})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/stats/outcomes", ["GET"], stats_outcomes),
    ("/stats/summary", ["GET"], stats_summary),
    ("/stats/series", ["GET"], stats_series),
    ("/stats/top", ["GET"], stats_top),
]
