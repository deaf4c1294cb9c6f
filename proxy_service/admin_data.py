"""Admin API: config, error logs, stats, the read-only SQL endpoint, the schema and the Parquet export."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from proxy_service import admin, queries, sql_guard
from proxy_service.admin import ApiError, iso, json_body, ok, parse_time, q_choice, q_int, q_time, read, state, write
from proxy_service.keys import mask
from proxy_service.settings import Config, ConfigError

if TYPE_CHECKING:
    from proxy_service.app import Gateway

log = logging.getLogger("keyrack.admin")
ARROW = "application/vnd.apache.arrow.stream"
_BUCKET_SECONDS = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}


def arrow_response(table: pa.Table, headers: dict[str, str] | None = None) -> Response:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    return Response(sink.getvalue().to_pybytes(), media_type=ARROW, headers=headers)


# -- config --------------------------------------------------------------------------------------------------------
async def get_config(gw: Gateway, _request: Request) -> Response:
    return ok({"values": gw.config.masked(), "fields": Config.fields()})


async def patch_config(gw: Gateway, request: Request) -> Response:
    patch = await json_body(request)
    if not patch:
        raise ApiError(400, 'send at least one setting to change, e.g. {"strategy": "round_robin"}')
    tokens = patch.get("access_tokens")
    if isinstance(tokens, list):  # a masked value sent back unchanged keeps the real token
        real = {mask(t): t for t in gw.config.access_tokens}
        patch["access_tokens"] = [real.get(t, t) if isinstance(t, str) else t for t in tokens]
    errors = {name: "unknown setting" for name in patch if name not in Config.model_fields}
    try:  # validate the known fields too, so that every bad field gets its message in one answer
        gw.config.updated({k: v for k, v in patch.items() if k in Config.model_fields})
    except ConfigError as exc:
        errors.update(exc.errors)
    if errors:
        raise ConfigError(errors)
    new = await gw.update_config(patch)
    return ok({"values": new.masked()})


async def reset_config(gw: Gateway, _request: Request) -> Response:
    new = await gw.reset_config()
    return ok({"values": new.masked()})


# -- error logs ----------------------------------------------------------------------------------------------------
_TEXT_FILTERS = ("key_id", "model", "error_type", "request_id", "q")


def error_filters(source: Mapping[str, Any]) -> dict[str, Any]:
    """Validated error-log filters from query parameters or a JSON object (unknown names are refused)."""
    unknown = set(source) - {"from", "to", "status", *_TEXT_FILTERS}
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(400, f"unknown filter {name!r} (use from, to, key_id, model, status, error_type, q)", name)
    out: dict[str, Any] = {}
    for name in ("from", "to"):
        if source.get(name) not in (None, ""):
            out[name] = parse_time(source[name], name)
    if source.get("status") not in (None, ""):
        try:
            out["status"] = int(source["status"])
        except (TypeError, ValueError):
            raise ApiError(400, f"status must be an HTTP status code, not {source['status']!r}", "status") from None
    for name in _TEXT_FILTERS:
        value = source.get(name)
        if value not in (None, ""):
            if not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string", name)
            out[name] = value
    if "from" in out and "to" in out and out["from"] >= out["to"]:
        raise ApiError(400, "from must be before to", "from")
    return out


async def list_errors(gw: Gateway, request: Request) -> Response:
    params = {k: v for k, v in request.query_params.items() if k not in ("page", "page_size")}
    filters = error_filters(params)
    page = q_int(request, "page", 1, 1, 1_000_000)
    page_size = q_int(request, "page_size", 50, 1, 1000)
    items, total = await read(gw, lambda cur: queries.error_page(cur, filters, page, page_size))
    return ok({"items": items, "total": total, "page": page, "page_size": page_size})


async def get_error(gw: Gateway, request: Request) -> Response:
    error_id = request.path_params["id"]
    entry = await read(gw, lambda cur: queries.error_entry(cur, error_id))
    if entry is None:
        raise ApiError(404, f"unknown error log id {error_id[:64]!r}", "id")
    return ok(entry)


async def delete_errors(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    given = [k for k in ("ids", "filter", "older_than") if k in body]
    if len(given) != 1 or set(body) - {"ids", "filter", "older_than"}:
        raise ApiError(400, 'send exactly one of {"ids": [...]}, {"filter": {...}} or {"older_than": "ISO date"}')
    if "ids" in body:
        ids = body["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "ids must be a list of error log ids", "ids")
        filters: dict[str, Any] = {"ids": ids}
    elif "filter" in body:
        if not isinstance(body["filter"], dict):
            raise ApiError(400, "filter must be an object like the search parameters", "filter")
        filters = error_filters(body["filter"])
        if not filters:
            raise ApiError(400, "filter is empty: name at least one criterion (or use older_than)", "filter")
    else:
        filters = {"to": parse_time(body["older_than"], "older_than")}
    deleted = await write(gw, lambda cur: queries.delete_errors(cur, filters))
    log.info("admin deleted %d error log entries", deleted)
    return ok({"deleted": deleted})


# -- stats ---------------------------------------------------------------------------------------------------------
def _tz(gw: Gateway) -> ZoneInfo:
    return ZoneInfo(gw.config.display_timezone)


async def _rollup_ready(gw: Gateway) -> bool:
    """Fold what the writer appended since the last fold, so the rollup covers every written row; False → go raw."""
    rollup = state(gw).rollup
    if rollup.usable:
        await write(gw, rollup.fold)
    return rollup.usable


async def stats_summary(gw: Gateway, _request: Request) -> Response:
    tz, now, usable = _tz(gw), queries.utcnow(), await _rollup_ready(gw)
    windows = await read(gw, lambda cur: queries.summary(cur, tz, now, usable))
    return ok({"windows": windows, "keys": gw.pool.counts(), "timezone": tz.key, "generated_at": iso(now)})


async def stats_series(gw: Gateway, request: Request) -> Response:
    g = q_choice(request, "granularity", queries.GRANULARITIES, "day")
    group_by = q_choice(request, "group_by", queries.GROUP_BYS, "none")
    fmt = q_choice(request, "format", ("json", "arrow"), "json")
    limit = q_int(request, "limit", 10, 1, 100)
    start, end = q_time(request, "from"), q_time(request, "to")
    if start and end and start >= end:
        raise ApiError(400, "from must be before to", "from")
    tz, now, usable = _tz(gw), queries.utcnow(), await _rollup_ready(gw)
    lo, hi = queries.series_range(g, tz, start, end, now)
    if (hi - lo).total_seconds() / _BUCKET_SECONDS[g] > queries.MAX_BUCKETS:
        raise ApiError(
            400, f"too many {g} buckets in that range (max {queries.MAX_BUCKETS}): use a coarser granularity"
        )
    table = await read(gw, lambda cur: queries.series(cur, g, group_by, tz, lo, hi, use_rollup=usable, limit=limit))
    meta = {"granularity": g, "group_by": group_by, "timezone": tz.key, "from": iso(lo), "to": iso(hi)}
    if fmt == "arrow":
        return arrow_response(table, {f"x-keyrack-{k.replace('_', '-')}": str(v) for k, v in meta.items()})
    rows = table.to_pylist()
    for r in rows:
        r["bucket"] = r["bucket"].isoformat()  # local start with its UTC offset, e.g. 2026-03-08T00:00:00-05:00
    return ok({**meta, "rows": rows})


async def stats_top(gw: Gateway, request: Request) -> Response:
    dim = q_choice(request, "dim", ("key", "model"), "key")
    limit = q_int(request, "limit", 10, 1, 100)
    end = q_time(request, "to") or queries.utcnow()
    start = q_time(request, "from") or end - timedelta(hours=24)
    if start >= end:
        raise ApiError(400, "from must be before to", "from")
    usable = await _rollup_ready(gw)
    items = await read(gw, lambda cur: queries.top(cur, dim, start, end, limit, usable))
    if dim == "key":
        for item in items:
            key = gw.pool.keys.get(item["name"] or "")
            item["label"], item["project"] = (key.label, key.project) if key else (None, None)
    if q_choice(request, "format", ("json", "arrow"), "json") == "arrow":
        return arrow_response(pa.Table.from_pylist(items) if items else pa.table({"name": pa.array([], pa.string())}))
    return ok({"dim": dim, "from": iso(start), "to": iso(end), "items": items})


# -- SQL, schema, export -------------------------------------------------------------------------------------------
async def run_query(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    sql, fmt = body.get("sql"), body.get("format", "arrow")
    if not isinstance(sql, str) or not sql.strip():
        raise ApiError(400, "sql is required: one SELECT over requests, attempts, error_logs or keys", "sql")
    if fmt not in ("arrow", "json"):
        raise ApiError(400, f"format must be arrow or json (got {fmt!r})", "format")
    cfg = gw.config
    async with state(gw).query_slots:
        try:
            result = await asyncio.to_thread(sql_guard.run, gw.store, sql, cfg.query_timeout_s, cfg.query_row_cap)
        except sql_guard.QueryRejected as exc:
            raise ApiError(400, f"query not allowed: {exc}", "sql") from None
        except sql_guard.QueryTimeout as exc:
            raise ApiError(408, f"query interrupted: {exc}", "sql") from None
        except sql_guard.QueryFailed as exc:
            raise ApiError(400, f"query failed: {exc}", "sql") from None
    table = result.table
    if fmt == "arrow":
        headers = {"x-keyrack-truncated": "true" if result.truncated else "false",
                   "x-keyrack-rows": str(table.num_rows), "x-keyrack-elapsed-ms": f"{result.elapsed_ms:.1f}"}  # fmt: skip
        return arrow_response(table, headers)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    rows = [list(r.values()) for r in table.to_pylist()]
    return ok({"columns": columns, "rows": rows, "truncated": result.truncated, "row_count": table.num_rows,
               "row_cap": cfg.query_row_cap, "elapsed_ms": round(result.elapsed_ms, 1)})  # fmt: skip


async def schema(gw: Gateway, _request: Request) -> Response:
    return ok({"tables": await read(gw, queries.safe_schema)})


async def export(gw: Gateway, _request: Request) -> Response:
    result = await admin.export(gw)
    log.info("admin export: %s", ", ".join(f"{t}={n}" for t, n in result.rows.items()))
    return ok(result.as_json())


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/config", ["GET"], get_config),
    ("/config", ["PATCH"], patch_config),
    ("/config/reset", ["POST"], reset_config),
    ("/errors", ["GET"], list_errors),
    ("/errors/delete", ["POST"], delete_errors),
    ("/errors/{id}", ["GET"], get_error),
    ("/stats/summary", ["GET"], stats_summary),
    ("/stats/series", ["GET"], stats_series),
    ("/stats/top", ["GET"], stats_top),
    ("/query", ["POST"], run_query),
    ("/schema", ["GET"], schema),
    ("/export", ["POST"], export),
]
