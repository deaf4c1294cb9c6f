"""Admin API: the read-only SQL endpoint, the schema it may see, and the Parquet export."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service import queries, sql_guard
from proxy_service.admin.common import ApiError, arrow_response, json_body, ok

if TYPE_CHECKING:
    from proxy_service.app import Gateway

log = logging.getLogger("keyrack.admin")


async def run_query(gw: Gateway, request: Request) -> Response:
    body = await json_body(request)
    sql, fmt = body.get("sql"), body.get("format", "arrow")
    if not isinstance(sql, str) or not sql.strip():
        raise ApiError(400, "sql is required: one SELECT over requests, attempts, error_logs or keys", "sql")
    if fmt not in ("arrow", "json"):
        raise ApiError(400, f"format must be arrow or json (got {fmt!r})", "format")
    cfg = gw.config
    async with gw.query_slots:
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
        headers = {
            "x-keyrack-truncated": "true" if result.truncated else "false",
            "x-keyrack-rows": str(table.num_rows),
            "x-keyrack-elapsed-ms": f"{result.elapsed_ms:.1f}",
        }
        return arrow_response(table, headers)
    columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    rows = [list(r.values()) for r in table.to_pylist()]
    return ok(
        {
            "columns": columns,
            "rows": rows,
            "truncated": result.truncated,
            "row_count": table.num_rows,
            "row_cap": cfg.query_row_cap,
            "elapsed_ms": round(result.elapsed_ms, 1),
        }
    )


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
