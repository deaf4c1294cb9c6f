"""Admin API: Explore (measures × up to two dimensions) and its drill-down to the calls behind a cell.

Contract: docs/ARCHITECTURE.md ("Explore"). Validation lives in `explore.parse_spec`; its errors become 400s naming
the field. Reads fold the pre-aggregates first so that answers cover every written row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

import duckdb
from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import arrow_response, dumps, iso, json_body, ok, rollup_ready
from proxy_service.analytics import explore, queries
from proxy_service.errors import ApiError
from proxy_service.store import utcnow

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

T = TypeVar("T")
SLOT_WAIT_S = 10.0  # how long an Explore read waits for one of the gateway's explore slots before a 503


@contextlib.asynccontextmanager
async def _slot(gw: Gateway) -> AsyncIterator[None]:
    """One of the few Explore reads that may run at once (`Gateway.explore_slots`): the others wait a little, then
    answer 503 explore_busy, so heavy reads never take every core and thread from the proxy."""
    try:
        await asyncio.wait_for(gw.explore_slots.acquire(), SLOT_WAIT_S)
    except TimeoutError:
        raise ApiError(
            503,
            f"Explore is busy: other Explore reads hold every slot and none ended within {SLOT_WAIT_S:g} s; "
            "try again in a moment",
            reason="explore_busy",
            detail=f"no Explore slot free within {SLOT_WAIT_S:g} s",
        ) from None
    try:
        yield
    finally:
        gw.explore_slots.release()


async def _limited(gw: Gateway, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """`gw.read(fn)` within `explore_timeout_s`: interrupted past it (408 explore_timeout)."""
    limit = gw.config.explore_timeout_s

    def job(cur: duckdb.DuckDBPyConnection) -> T:
        with queries.time_limit(cur, limit) as fired:
            try:
                return fn(cur)
            except duckdb.Error:
                if fired.is_set():
                    raise _TimedOut from None
                raise

    try:
        return await gw.read(job)
    except (_TimedOut, explore.ExploreTimeout):
        raise _timeout(limit) from None


def _timeout(limit: float) -> ApiError:
    detail = f"the answer took longer than the {limit:g} s limit (explore_timeout_s); narrow the range or filters"
    return ApiError(408, f"explore interrupted: {detail}", reason="explore_timeout", detail=detail)


def encode_json(ans: explore.Answer, meta: dict[str, Any], deadline: float | None) -> bytes:
    """The JSON answer (`{"columns", "rows", **meta}`), its rows encoded a chunk at a time with the deadline checked
    between chunks (ExploreTimeout past it): a big answer's encoding is CPU seconds of Python."""
    parts: list[bytes] = []
    for start in range(0, len(ans.rows), explore.CHECK_EVERY):
        explore.check_deadline(deadline)
        parts.append(dumps(ans.rows[start : start + explore.CHECK_EVERY])[1:-1])
    head = dumps({"columns": ans.columns})[:-1]  # without its closing brace: the rows follow
    tail = dumps(meta)[1:] if meta else b"}"
    return head + b', "rows": [' + b", ".join(parts) + (b"], " + tail if meta else b"]" + tail)


class _TimedOut(Exception):
    pass


def _spec(gw: Gateway, body: dict[str, Any]) -> tuple[explore.Spec, str, ZoneInfo]:
    tz = ZoneInfo(gw.config.display_timezone)
    try:
        spec, fmt = explore.parse_spec(body, tz, utcnow(), gw.config.client_labels)
    except explore.ExploreError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    return spec, fmt, tz


async def run_explore(gw: Gateway, request: Request) -> Response:
    spec, fmt, tz = _spec(gw, await json_body(request))
    (usable, progress), labels = await rollup_ready(gw), gw.config.client_labels
    limit = gw.config.explore_timeout_s
    deadline: list[float] = []  # the whole answer (read, build, encode) within explore_timeout_s of the read's start

    def read(cur: duckdb.DuckDBPyConnection) -> explore.Answer:
        deadline.append(time.monotonic() + limit)
        return explore.answer(cur, spec, tz, labels, zone=gw.rollup.zone if usable else None, deadline=deadline[0])

    try:
        async with _slot(gw):
            ans = await _limited(gw, read)
    except explore.ExploreError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    # While the pre-aggregates are rebuilt (after an upgrade or a display-zone change) answers are still exact, read
    # from the raw rows (slower); `rebuilding` says so, with the share done (0..1), absent otherwise.
    meta = {
        "timezone": ans.timezone,
        "from": iso(ans.lo),
        "to": iso(ans.hi),
        "source": ans.source,
        "compare_from": iso(ans.compare_lo),
        "compare_to": iso(ans.compare_hi),
        "rebuilding": progress,
    }
    # Encoding a big answer takes CPU seconds: on a worker thread, never on the event loop that serves the proxy,
    # and within the answer's deadline.
    shown = {k: v for k, v in meta.items() if v is not None}
    try:
        if fmt == "arrow":
            headers = {f"x-keyrack-{k.replace('_', '-')}": str(v) for k, v in shown.items()}
            return await asyncio.to_thread(lambda: arrow_response(explore.to_columns(ans, deadline[0]), headers))
        body = await asyncio.to_thread(encode_json, ans, shown, deadline[0])
    except explore.ExploreTimeout:
        raise _timeout(limit) from None
    return Response(body, media_type="application/json")


async def explore_calls(gw: Gateway, request: Request) -> Response:
    """The calls behind one cell: the explore request's range and filters plus `cell` {dimension: value}."""
    body = await json_body(request)
    cell, limit = body.pop("cell", {}) or {}, body.pop("limit", 100)
    if not isinstance(cell, dict):
        raise ApiError(400, 'cell must be an object like {"model": "gemini-2.5-flash", "hour_of_day": 9}', "cell")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= explore.DRILL_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {explore.DRILL_LIMIT}", "limit")
    if any(v == explore.OTHER for v in cell.values()):
        raise ApiError(400, f"{explore.OTHER} stands for many values: drill into a named one", "cell")
    body.setdefault("measures", ["calls"])
    filters = body.get("filters") or {}
    if not isinstance(filters, dict):
        raise ApiError(400, 'filters must be an object like {"model": ["gemini-2.5-flash"]}', "filters")
    body["filters"] = {**filters, **{k: [v] for k, v in cell.items()}}
    spec, _, tz = _spec(gw, body)
    await rollup_ready(gw)
    async with _slot(gw):
        items = await _limited(gw, lambda cur: explore.calls(cur, spec, tz, limit))
    labels = gw.config.client_labels
    for item in items:
        item["client"] = labels.get(item["client_id"] or "", item["client_id"])
    return ok({"items": items, "sql": explore.sql_text(spec, tz), "from": iso(spec.lo), "to": iso(spec.hi)})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/explore", ["POST"], run_explore),
    ("/explore/calls", ["POST"], explore_calls),
]
