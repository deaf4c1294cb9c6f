"""Admin API: the read-only SQL endpoint, the schema it may see, and the Parquet export."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import json_body, ok
from proxy_service.analytics import queries, sql_guard
from proxy_service.analytics.answers import ARROW
from proxy_service.analytics.sql_sandbox import SandboxUnavailable
from proxy_service.errors import ApiError

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.admin")


async def run_query(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    sql, fmt = body.get("sql"), body.get("format", "arrow")
    if not isinstance(sql, str) or not sql.strip():
        raise ApiError(
            400, "sql is required: one SELECT over requests, attempts, error_logs or keys", "sql", reason="sql_required"
        )
    if fmt not in ("arrow", "json"):
        raise ApiError(
            400, f"format must be arrow or json (got {fmt!r})", "format", reason="invalid_value", detail=repr(fmt)[:100]
        )
    cfg = gw.config
    byte_cap = int(cfg.query_byte_cap_mb * 1024 * 1024)
    async with gw.query_slots:
        try:
            # Both modes: a sandboxed worker process over a Parquet snapshot, never this process; it also writes the
            # answer (JSON or Arrow), so a big answer costs this process neither CPU nor the Arrow libraries.
            result = await asyncio.to_thread(gw.sandbox.run, sql, cfg.query_timeout_s, cfg.query_row_cap, byte_cap, fmt)
        except sql_guard.QueryRejected as exc:
            raise ApiError(
                400, f"query not allowed: {exc}", "sql", reason="query_not_allowed", detail=str(exc)
            ) from None
        except sql_guard.QueryTimeout as exc:
            raise ApiError(408, f"query interrupted: {exc}", "sql", reason="query_timeout", detail=str(exc)) from None
        except sql_guard.QueryTooCostly as exc:
            raise ApiError(400, f"query too costly: {exc}", "sql", reason="query_too_costly", detail=str(exc)) from None
        except sql_guard.QueryFailed as exc:
            raise ApiError(400, f"query failed: {exc}", "sql", reason="query_failed", detail=str(exc)) from None
        except SandboxUnavailable as exc:
            raise ApiError(503, str(exc), "sql", reason="sql_unavailable", detail=str(exc)) from None
    if fmt == "arrow":
        headers = {
            "x-keyrack-truncated": "true" if result.truncated else "false",
            "x-keyrack-rows": str(result.rows),
            "x-keyrack-elapsed-ms": f"{result.elapsed_ms:.1f}",
        }
        return Response(result.body, media_type=ARROW, headers=headers)
    return Response(result.body, media_type="application/json")


async def schema(gw: Gateway, _request: Request) -> Response:
    return ok({"tables": await gw.read(queries.safe_schema)})


async def export(gw: Gateway, _request: Request) -> Response:
    result = await gw.export()
    log.info("admin export: %s", ", ".join(f"{t}={n}" for t, n in result.rows.items()))
    return ok(result.as_json())


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/query", ["POST"], run_query),
    ("/schema", ["GET"], schema),
    ("/export", ["POST"], export),
]
