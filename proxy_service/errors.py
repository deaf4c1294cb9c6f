"""Errors Keyrack itself produces, in one place, and the two body shapes they are written in.

Hierarchy:
    KeyrackError                 an answer Keyrack gives on its own (never an upstream answer: those pass through)
    ├── Unauthorized      401    missing or wrong client/admin token
    │   └── Forbidden     403    open-localhost mode refuses a request a browser page could have sent
    ├── BadRequest        400    malformed JSON, missing model, bad parameters
    ├── NotFound          404    unknown path or id
    ├── MethodNotAllowed  405
    ├── PayloadTooLarge   413    body over `max_body_mb`
    ├── UnsupportedMediaType 415 open-localhost mode: a POST without a JSON content type
    ├── PoolExhausted     429    no key can take the call now; carries `retry_after` seconds
    ├── ClientRefused     403/429 the client's own policy: model allow-list, limits, priority under scarcity
    ├── UpstreamUnreachable 502/504  every attempt failed without an upstream answer (timeouts, resets)
    │   └── BadUpstreamAnswer 502    an answer Keyrack will not pass on: over `max_answer_mb`, or an invalid status
    └── ApiError          4xx/5xx an admin API answer (`/admin/api/*`): its status per instance, `reason` a stable
                                  code the dashboard translates, `detail` the part of the message that is data

The client surfaces write a `KeyrackError` in Google's or OpenAI's shape (below); the admin API writes an `ApiError`
in its own shape (`admin/common.error_response`). One root, so a handler never wonders which family to raise.

`StreamAborted` is not an answer: raised inside a committed stream's body, it makes the server drop the client's
connection without the final chunk, so a stream broken upstream ends broken for the client too.

Upstream errors are not exceptions: the client gets the upstream's real status and body.

`NotReady` is not an answer: a background job whose prerequisite is not there yet (the rollup still rebuilding)
raises it to be skipped quietly and run again soon; a traceback is kept for what is really broken.
"""

from __future__ import annotations

import json
import math
from typing import Any

_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class NotReady(Exception):
    """A background job's prerequisite is not ready yet: skip this run quietly, retry soon (the message says why)."""


class KeyrackError(Exception):
    status_code = 500
    error_type = "proxy_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        return {}

    def details(self) -> list[dict[str, Any]]:
        """`google.rpc` details for Google's envelope (the native surface); none by default."""
        return []


class Unauthorized(KeyrackError):
    status_code = 401
    error_type = "unauthorized"


class Forbidden(Unauthorized):
    """A refusal of access (recorded like a missing token): open-localhost mode and a request from a web page."""

    status_code = 403
    error_type = "forbidden"


class BadRequest(KeyrackError):
    status_code = 400
    error_type = "bad_request"


class NotFound(KeyrackError):
    status_code = 404
    error_type = "not_found"


class MethodNotAllowed(KeyrackError):
    status_code = 405
    error_type = "method_not_allowed"


class PayloadTooLarge(KeyrackError):
    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaType(Unauthorized):
    """Open-localhost mode only takes JSON POSTs: a text/plain or form POST is what a cross-site page can send."""

    status_code = 415
    error_type = "unsupported_media_type"


def retry_after_s(wait_s: float) -> int:
    """The one rounding rule for every wait Keyrack states (header and text alike): whole seconds, rounded up so a
    client that waits exactly this long is never early, at least 1. A microsecond of float noise is not a second."""
    return max(1, math.ceil(wait_s - 1e-6))


def retry_headers(seconds: int) -> dict[str, str]:
    """`Retry-After` / `retry-after-ms` for a wait of `seconds` (already rounded by `retry_after_s`)."""
    # The openai SDK waits `retry-after` when ≤ 60 s and retries; beyond that a retry is pointless, so say so.
    return {
        "retry-after": str(seconds),
        "retry-after-ms": str(seconds * 1000),
        "x-should-retry": "true" if seconds <= 60 else "false",
    }


class PoolExhausted(KeyrackError):
    """No key can take the call: all cooling, out of headroom, invalid or disabled.

    `reason` is the sentence without the wait; the message appends "retry in Ns." with the same N as the headers.
    `cause` says why in one word (`configured_limit`, `learned_limit`, `upstream_cooldown`, `no_usable_key`,
    `all_tried`, `paid_cap`); `violation`, when the refusal is a quota's, is its `google.rpc.QuotaFailure` violation.
    The native surface's body carries both as Google's details (`ErrorInfo`, `QuotaFailure`, `RetryInfo`), as Google's own 429s do.
    """

    status_code = 429
    error_type = "exhausted"

    def __init__(
        self, reason: str, wait_s: float, cause: str = "no_usable_key", violation: dict[str, Any] | None = None
    ) -> None:
        self.retry_after = retry_after_s(wait_s)
        self.cause = cause
        self.violation = violation
        super().__init__(f"{reason}; retry in {self.retry_after}s.")

    def headers(self) -> dict[str, str]:
        return retry_headers(self.retry_after)

    def details(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.cause.upper(), "domain": "keyrack"}
        ]
        if self.violation is not None:
            out.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [self.violation]})
        out.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_after}s"})
        return out


class ClientRefused(KeyrackError):
    """The client's own policy refuses the call (before any key is chosen): its model allow-list (403), one of its
    limits, or its class's priority while the model's quota is scarce (429 with the wait). `refusal` is the event's
    reason: `client_model`, `client_limit` or `priority`."""

    error_type = "client_refused"

    def __init__(self, message: str, refusal: str, status: int = 429, wait_s: float | None = None) -> None:
        self.status_code = status
        self.refusal = refusal
        self.retry_after = retry_after_s(wait_s) if wait_s is not None else None
        if self.retry_after is not None:
            message = f"{message}; retry in {self.retry_after}s."
        super().__init__(message)

    def headers(self) -> dict[str, str]:
        return retry_headers(self.retry_after) if self.retry_after is not None else {}

    def details(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.refusal.upper(), "domain": "keyrack"}
        ]
        if self.retry_after is not None:
            out.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{self.retry_after}s"})
        return out


class UpstreamUnreachable(KeyrackError):
    status_code = 502
    error_type = "upstream_unreachable"

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        if timed_out:
            self.status_code = 504


class BadUpstreamAnswer(UpstreamUnreachable):
    """The upstream answered, but with something Keyrack does not pass on (recorded by the relay, like its parent)."""


class ApiError(KeyrackError):
    """An admin API answer: `status_code` per instance, `reason` (a stable code), `detail` and extra body fields."""

    error_type = "admin_error"

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        reason: str | None = None,
        detail: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message, field=field)
        self.status_code = status
        self.reason, self.detail, self.extra = reason, detail, extra


class StreamAborted(Exception):
    """Raised from a stream's body iterator after the upstream broke the stream (see logs: not logged as a crash)."""


def google_body(
    code: int, message: str, status: str | None = None, details: list[dict[str, Any]] | None = None
) -> bytes:
    """Google's error envelope (google.rpc.Status), pretty-printed as Google does."""
    err: dict[str, Any] = {"code": code, "message": message, "status": status or _GOOGLE_STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return json.dumps({"error": err}, indent=2).encode() + b"\n"


def openai_body(code: int, message: str, param: str | None = None, error_code: str | None = None) -> bytes:
    """OpenAI's error shape, which the openai SDK turns into typed exceptions (`error_code`: its `code` field,
    by default derived from the HTTP status)."""
    if error_code is None:
        error_code = _GOOGLE_STATUS.get(code, "api_error").lower() if code != 429 else "rate_limit_exceeded"
    err: dict[str, Any] = {
        "error": {"message": message, "type": _OPENAI_TYPE.get(code, "api_error"), "param": param, "code": error_code}
    }
    return json.dumps(err).encode()


def sse_error_event(
    openai: bool, code: int, message: str, separator: bytes = b"\n\n", error_code: str = "stream_broken"
) -> bytes:
    """One server-sent event carrying an error in the surface's shape, which both SDKs raise on."""
    if openai:
        err: dict[str, Any] = {"error": {"message": message, "type": "api_error", "param": None, "code": error_code}}
    else:
        err = {"error": {"code": code, "message": message, "status": _GOOGLE_STATUS.get(code, "UNKNOWN")}}
    return b"data: " + json.dumps(err).encode() + separator
