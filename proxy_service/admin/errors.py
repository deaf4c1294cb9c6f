"""Admin API: the error logs (search with filters, one entry, delete by ids, filter or age)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import json_body, ok, parse_time, q_int, q_time
from proxy_service.analytics import pool_queries, queries
from proxy_service.errors import ApiError

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.admin")


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
    items, total = await gw.read(lambda cur: queries.error_page(cur, filters, page, page_size))
    return ok({"items": items, "total": total, "page": page, "page_size": page_size})


async def get_error(gw: Gateway, request: Request) -> Response:
    error_id = request.path_params["id"]
    entry = await gw.read(lambda cur: queries.error_entry(cur, error_id))
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
    deleted = await gw.write(lambda cur: queries.delete_errors(cur, filters))
    log.info("admin deleted %d error log entries", deleted)
    return ok({"deleted": deleted})


async def error_facets(gw: Gateway, request: Request) -> Response:
    """The values the error-log filters can take in [from, to): {column: [{value, count}]}, most frequent first."""
    lo, hi = q_time(request, "from"), q_time(request, "to")
    limit = q_int(request, "limit", 200, 1, 1000)
    facets = await gw.read(lambda cur: pool_queries.error_facets(cur, lo, hi, limit))
    return ok({"facets": facets})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/errors/facets", ["GET"], error_facets),
    ("/errors", ["GET"], list_errors),
    ("/errors/delete", ["POST"], delete_errors),
    ("/errors/{id}", ["GET"], get_error),
]
