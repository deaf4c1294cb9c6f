"""What both client-facing surfaces share: client auth, bounded body reading, and turning Keyrack's own
errors into the surface's error shape (while recording the call: no request goes unrecorded)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from proxy_service import metrics
from proxy_service.clients import Client, config_client_id
from proxy_service.errors import (
    ClientRefused,
    Forbidden,
    KeyrackError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    google_body,
    openai_body,
)
from proxy_service.relay import Call, Surface
from proxy_service.settings import is_loopback, is_model_name

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.proxy")
Handler = Callable[[Request, "Gateway"], Awaitable[Response]]
# Hop-by-hop and identity headers are Keyrack's own business; everything else a client sends is dropped too,
# except what the upstream needs to interpret the request.
FORWARD_HEADERS = ("content-type", "accept", "user-agent", "x-goog-api-client", "x-server-timeout")
# Query parameters the Gemini API defines for the routes Keyrack serves (docs/ARCHITECTURE.md, the wire reference):
# everything else stays here, so no client credential (`key`, `KEY`, `access_token`, ...) is ever forwarded.
FORWARD_QUERY = frozenset({"alt", "$alt", "pageSize", "pageToken", "filter"})


def client_token(request: HTTPConnection) -> str | None:
    token = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if token:
        return token.strip()
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


def client_id(token: str | None) -> str | None:
    return config_client_id(token) if token else None


def authenticate(request: HTTPConnection, gw: Gateway) -> tuple[str | None, Client | None]:
    """The client's id and record, or Unauthorized/Forbidden.

    A token is looked up by its keyed hash among the client records (`clients.py`: one HMAC, one dict lookup; the
    hash of a wrong token says nothing about a right one). With no record at all the proxy is open, which is allowed
    only while it is bound to loopback (checked at startup and on every config change; checked here again so that a
    way around those checks still fails closed) and only for local programs: see `check_local_caller`.
    """
    book = gw.clients
    token = client_token(request)
    if not book.required:
        if not gw.loopback:
            raise Unauthorized("This Keyrack has no client tokens configured and is not bound to loopback: refused.")
        check_local_caller(request)
        return (client_id(token) if token else "anonymous"), None
    if token is None:
        raise Unauthorized(
            "Missing client token: send your Keyrack access token as x-goog-api-key, ?key= or Authorization: Bearer."
        )
    client = book.find(token)
    if client is None:
        raise Unauthorized("Invalid client token: it is not one of this Keyrack's access tokens.")
    if client.revoked_at is not None:
        raise Unauthorized(f"Client token of '{client.label}' was revoked.")
    if not client.active(book.clock()):
        raise Unauthorized(f"Client token of '{client.label}' has expired.")
    return client.id, client


def _host_name(value: str) -> str:
    """The host part of a Host header or of an origin's netloc: strip the port (IPv6 literals keep their [])."""
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def check_local_caller(request: HTTPConnection) -> None:
    """Open-localhost mode: refuse what a web page in a browser could send (cheap header checks only).

    A DNS-rebinding page reaches 127.0.0.1 under its own name (Host), a page elsewhere sends its Origin and
    `Sec-Fetch-Site: cross-site`, and a cross-site form or `fetch` without a preflight can only POST text/plain,
    form or multipart bodies, so a JSON content type is required on POST.
    """
    headers = request.headers
    host = headers.get("host", "")
    if not is_loopback(_host_name(host)):
        raise Forbidden(
            f"Host {host[:100]!r} is not a loopback name: this Keyrack has no client tokens and only serves "
            "programs on this machine (call it as 127.0.0.1 or localhost, or configure access tokens)."
        )
    origin = headers.get("origin")
    if origin is not None:
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not is_loopback(_host_name(rest.split("/", 1)[0])):
            raise Forbidden(
                f"Origin {origin[:100]!r} is not a loopback origin: web pages may not call a Keyrack that has no "
                "client tokens."
            )
    if headers.get("sec-fetch-site") == "cross-site":
        raise Forbidden("Cross-site browser requests may not call a Keyrack that has no client tokens.")
    if request.scope.get("method") == "POST":  # a WebSocket handshake (the Live API) has no body to check
        ctype = headers.get("content-type", "").partition(";")[0].strip().lower()
        if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
            raise UnsupportedMediaType(
                f"Content-Type {ctype or '(none)'!r} refused: send the body as application/json "
                "(a Keyrack without client tokens takes only JSON POSTs, which a web page cannot send cross-site)."
            )


async def read_body(request: Request, limit_mb: float) -> bytes:
    limit = int(limit_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the {limit_mb:g} MB limit.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the {limit_mb:g} MB limit.")
        chunks.append(chunk)
    return b"".join(chunks)


def forward_headers(request: Request) -> dict[str, str]:
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers["accept-encoding"] = "identity"  # usage is read from the bytes; keep them uncompressed
    return headers


def forward_query(request: Request) -> list[tuple[str, str | int | float | bool | None]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k in FORWARD_QUERY]


def error_response(surface: Surface, exc: KeyrackError, request_id: str | None = None) -> Response:
    headers = exc.headers()
    if request_id:  # every recorded request can be found from its answer, Keyrack's own errors included
        headers["x-keyrack-request-id"] = request_id
    if surface == "openai":
        return Response(
            openai_body(exc.status_code, exc.message, exc.field),
            exc.status_code,
            headers=headers,
            media_type="application/json",
        )
    body = google_body(exc.status_code, exc.message, details=exc.details())
    return Response(body, exc.status_code, headers=headers, media_type="application/json")


def base_call(request: Request, surface: Surface, operation: str, model: str | None) -> Call:
    return Call(
        surface=surface,
        operation=operation,
        model=model,
        method=request.method,
        path="",
        query=[],
        headers={},
        body=b"",
        stream=False,
        client_id=None,
    )


async def answer_call(
    request: Request,
    gw: Gateway,
    surface: Surface,
    operation: str,
    model: str | None,
    handler: Callable[[Call], Awaitable[Response]],
) -> Response:
    """Authenticate, run `handler`, and make sure every outcome is answered in the surface's shape and recorded."""
    call = base_call(request, surface, operation, model)
    try:
        call.client_id, call.client = authenticate(request, gw)
        return await handler(call)
    except KeyrackError as exc:
        if exc.error_type not in ("exhausted", "upstream_unreachable"):  # the relay already recorded those
            untrusted(call)
            outcome = "unauthorized" if isinstance(exc, Unauthorized) else "client_error"
            if isinstance(exc, ClientRefused):
                outcome = "refused"
            ev = gw.relay.request_event(call, exc.status_code, outcome, 0)
            ev.error_message, ev.error_status = exc.message[:500], exc.error_type
            gw.relay.record_request(call, ev)
        return error_response(surface, exc, call.request_id)
    except Exception as exc:
        log.exception("internal error on %s %s (request %s)", surface, operation, call.request_id)
        untrusted(call)
        gw.relay.internal_error(call, exc)
        return error_response(
            surface, KeyrackError(f"Keyrack internal error (request {call.request_id})."), call.request_id
        )


def untrusted(call: Call) -> None:
    """A refused call keeps its model name only if it has a model id's shape (≤ 128 characters); counted.

    Anyone can send a refused call, so what it carries must cost little to store and must not reach analytics or
    metric labels (which stay for authenticated calls: `metrics.observe_request`).
    """
    if call.client_id is None:
        metrics.UNTRUSTED.labels("unauthenticated").inc()
    if call.model is not None and not is_model_name(call.model):
        metrics.UNTRUSTED.labels("invalid_model").inc()
        call.model, call.junk_model = None, True
