"""The admin API's route table, mounted once under `/admin/api`: every concern's `ROUTES`, each behind the
admin-token guard, and a fallback behind the same guard that answers unknown paths (404) and wrong methods (405) in the API's
own error shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route

from proxy_service.admin import alerts, clients, config, errors, explore, forecast, keys, pool, sql, stats
from proxy_service.admin.common import Handler, behind_admin_token, error_response

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

PREFIX = "/admin/api"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def mount(gw: Gateway) -> Mount:
    table: list[tuple[str, list[str], Handler]] = [
        *keys.ROUTES,
        *clients.ROUTES,
        *config.ROUTES,
        *errors.ROUTES,
        *stats.ROUTES,
        *sql.ROUTES,
        *forecast.ROUTES,
        *explore.ROUTES,
        *alerts.ROUTES,
        *pool.ROUTES,
    ]
    routes = [Route(path, behind_admin_token(gw, h), methods=methods) for path, methods, h in table]

    async def fallback(_gw: Gateway, request: Request) -> Response:
        allowed = [r for r in routes if r.matches(request.scope)[0] == Match.PARTIAL]
        if allowed:
            methods = sorted({m for r in allowed for m in (r.methods or ())} - {"HEAD"})
            return error_response(405, f"{request.method} is not allowed here (allowed: {', '.join(methods)})")
        return error_response(404, f"unknown admin API path {request.url.path[:200]}")

    return Mount(PREFIX, routes=[*routes, Route("/{rest:path}", behind_admin_token(gw, fallback), methods=ALL_METHODS)])
