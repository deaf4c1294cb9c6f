"""What every admin route shares: the JSON answer helpers, request and query-parameter parsing, and
the admin-token guard.

Contract: docs/ARCHITECTURE.md. Every route needs `Authorization: Bearer <KEYRACK_ADMIN_TOKEN>` (compared in
constant time); without a configured token the whole API answers 503. Errors are
`{"error": {"code", "message", "field"?, "reason"?, "detail"?}}`: `reason` is a stable machine-readable code (e.g.
"query_failed") a client can translate, `detail` the part of the message that is data (e.g. DuckDB's own words). Handlers are `async (gw, request)`; they read the database with
`gw.read(fn)` (a worker thread, its own cursor) and write with `gw.write(fn)` (the event writer's thread).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from proxy_service.analytics.answers import ARROW, ResultTable, arrow_ipc, dumps
from proxy_service.analytics.answers import iso as iso  # the admin routes take it from here
from proxy_service.errors import ApiError
from proxy_service.events import WriterUnavailable
from proxy_service.settings import ConfigError
from proxy_service.spill import fault_reason
from proxy_service.store import StorageFault

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.admin")
MAX_BODY = 10 * 1024 * 1024
Handler = Callable[["Gateway", Request], Awaitable[Response]]


# -- reads over the pre-aggregates ----------------------------------------------------------------------------------
async def rollup_ready(gw: Gateway) -> tuple[bool, float | None]:
    """Fold what the writer appended since the last fold, so the
    pre-aggregates cover every written row; False → read the raw rows. Also the rebuild's progress at that moment
    (0..1, None when none runs): an answer says `rebuilding` when it was read raw because of the rebuild, even if the
    rebuild ends while it is read (progress is read first: a rebuild ending in between shows as running)."""
    rollup = gw.rollup
    if rollup.usable:
        await gw.write(rollup.fold)
    progress = rollup.progress
    return rollup.usable, progress


# -- responses -----------------------------------------------------------------------------------------------------
def error_response(
    status: int,
    message: str,
    field: str | None = None,
    *,
    reason: str | None = None,
    detail: str | None = None,
    **extra: Any,
) -> JSONResponse:
    err: dict[str, Any] = {"code": status, "message": message}
    if field:
        err["field"] = field
    if reason:
        err["reason"] = reason
    if detail is not None:
        err["detail"] = detail
    headers = {"www-authenticate": 'Bearer realm="keyrack-admin"'} if status == 401 else None
    return JSONResponse({"error": err, **extra}, status_code=status, headers=headers)


def ok(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status, media_type="application/json")


def arrow_response(table: ResultTable, headers: dict[str, str] | None = None) -> Response:
    return Response(arrow_ipc(table), media_type=ARROW, headers=headers)


# -- request parsing -------------------------------------------------------------------------------------------------
async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY // (1024 * 1024)} MB")
    if not raw.strip():
        raise ApiError(400, "request body is empty: send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}", reason="invalid_body", detail=str(exc)) from None
    except RecursionError:  # tens of thousands of nested [ or {: the client's fault
        raise ApiError(
            400, "request body is not valid JSON: nested too deeply", reason="invalid_body", detail="nested too deeply"
        ) from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, not {type(data).__name__}")
    return data


def parse_time(value: Any, name: str) -> datetime:
    """ISO-8601 date or time → naive UTC (a time without an offset is UTC)."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(
            400,
            f"{name} must be an ISO-8601 date or time such as 2026-01-31T12:00:00Z",
            name,
            reason="invalid_value",
            detail=repr(value)[:100],
        )
    text = value.strip()
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ApiError(
            400,
            f"{name}: {value!r} is not an ISO-8601 date or time (e.g. 2026-01-31T12:00:00Z)",
            name,
            reason="invalid_value",
            detail=repr(value)[:100],
        ) from None
    try:
        return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t
    except OverflowError:  # year 1 or 9999 with an offset: the UTC instant is outside the calendar
        raise ApiError(
            400,
            f"{name}: {value!r} is out of range (years 1 to 9999 in UTC)",
            name,
            reason="invalid_value",
            detail=repr(value)[:100],
        ) from None


def q_time(request: Request, name: str) -> datetime | None:
    value = request.query_params.get(name)
    return parse_time(value, name) if value else None


def q_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(
            400, f"{name} must be an integer, not {value!r}", name, reason="invalid_value", detail=repr(value)[:100]
        ) from None
    if not lo <= n <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}", name, reason="invalid_value", detail=str(n))
    return n


def q_choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise ApiError(
            400,
            f"{name} must be one of {', '.join(choices)} (got {value!r})",
            name,
            reason="invalid_value",
            detail=repr(value)[:100],
        )
    return value


def _storage_unavailable(reason: str) -> Response:
    return error_response(
        503,
        f"storage unavailable ({reason}): nothing was saved or exported; try again once the data disk takes writes "
        "(see /readyz)",
        reason="storage_unavailable",
        detail=reason,
    )


# -- auth ------------------------------------------------------------------------------------------------------------
def behind_admin_token(gw: Gateway, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """`handler` as an endpoint: the admin token checked first, every exception answered in the API's shape."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        token = gw.settings.admin_token
        if not token:
            return error_response(
                503, "The admin API is disabled: KEYRACK_ADMIN_TOKEN is not set.", reason="admin_disabled"
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error_response(
                401, "Missing or wrong admin token (send Authorization: Bearer <token>).", reason="unauthorized"
            )
        try:
            return await handler(gw, request)
        except ApiError as exc:
            return error_response(
                exc.status_code, exc.message, exc.field, reason=exc.reason, detail=exc.detail, **exc.extra
            )
        except ConfigError as exc:
            first = next(iter(exc.errors), None)
            return error_response(
                422, f"invalid configuration: {exc}", first, reason="invalid_config", errors=exc.errors
            )
        except WriterUnavailable as exc:
            return error_response(503, f"not saved: {exc}", reason="not_saved", detail=str(exc))
        except StorageFault as exc:
            return _storage_unavailable(exc.reason)
        except Exception as exc:
            reason = fault_reason(exc)  # an export or a read that met the failing disk itself
            if reason is not None:
                log.warning("admin %s %s: storage fault: %s", request.method, request.url.path, reason)
                return _storage_unavailable(reason)
            log.exception("admin %s %s failed", request.method, request.url.path)
            return error_response(500, f"internal error ({type(exc).__name__}); see the proxy log", reason="internal")

    return endpoint
