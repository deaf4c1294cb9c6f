"""The request path shared by both surfaces: choose a key → call upstream → learn → record.

Retries go to another key (another scope after a 429, since the 429's cooldown covers the whole scope) for
429s, invalid keys, 5xx, timeouts and connection errors, at most `max_retries` times. Errors the request itself
caused (other 4xx) go back as they are, at once, and never count against a key. A stream is committed to the
client only when its first upstream chunk has arrived intact; after that it ends as the upstream ends it, and a
break upstream (reset, truncation, read timeout) ends it broken for the client too: never as a complete answer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NoReturn, TypeVar

import aiohttp
import httpx
from starlette.responses import Response, StreamingResponse

from proxy_service import metrics, routing
from proxy_service.clients import Client, ClientBook
from proxy_service.errors import (
    BadUpstreamAnswer,
    ClientRefused,
    PoolExhausted,
    StreamAborted,
    UpstreamUnreachable,
    google_body,
    openai_body,
    retry_after_s,
    retry_headers,
    sse_error_event,
)
from proxy_service.events import AttemptEvent, ErrorEvent, EventWriter, RequestEvent
from proxy_service.keys import redact
from proxy_service.pool import Key, Pool
from proxy_service.prices import PriceBook
from proxy_service.quota import parse_rate_limit, stated_wait
from proxy_service.resources import answered_name, event_kind
from proxy_service.store import utcnow
from proxy_service.upstream import (
    STREAM_TAIL,
    AnswerTooLarge,
    Usage,
    answer_cap,
    error_object_bytes,
    error_outside_event,
    gemini_usage,
    has_error_object,
    openai_error,
    openai_usage,
    parse_error,
    read_answer,
    send,
    stream_error,
    stream_finished,
    upstream_request,
)

if TYPE_CHECKING:
    from proxy_service.settings import Config

Surface = Literal["gemini", "openai"]
AttemptOutcome = Literal[
    "ok",
    "rate_limited",
    "invalid_key",
    "server_error",
    "timeout",
    "connection_error",
    "client_error",
    "stream_error",
    "too_large",
]
T = TypeVar("T")
_BODY_CAP = 8192
_PASS_HEADERS = ("content-type",)


def redact_body(body: bytes) -> bytes:
    """An upstream error body as the client may see it: secrets redacted (error answers only, never a stream)."""
    text = body.decode("utf-8", "replace")
    clean = redact(text)
    return body if clean == text else clean.encode()


@dataclass
class Call:
    """One client request, as the relay needs it."""

    surface: Surface
    operation: str
    model: str | None
    method: str
    path: str  # upstream path, e.g. /v1beta/models/gemini-2.5-flash:generateContent
    query: list[tuple[str, str | int | float | bool | None]]
    headers: dict[str, str]
    body: bytes
    stream: bool
    client_id: str | None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.perf_counter)
    ts: datetime = field(default_factory=utcnow)
    deadline: float = float("inf")  # event-loop time by which the answer (or a stream's first chunk) must be there
    junk_model: bool = False  # the client sent a model name that is no model id (dropped: recorded as NULL)
    project: str | None = None  # only keys of this project: the call names a resource it owns (resources.py)
    resource: str | None = None  # the resource the call names or creates (files/…, cachedContents/…, batches/…)
    # The kind of resource the call works on, for its event (resources.EVENT_KINDS, or "live"); set by the resource
    # routes. None: the kind of `resource` when it names one (a generate call naming a file or cache).
    resource_kind: str | None = None
    answer_headers: tuple[str, ...] = ()  # upstream answer headers the client needs beyond content-type (uploads)
    client: Client | None = None  # the client's record (None: open mode)
    admitted: bool = False  # counted against the client's limits: released once, when the call is recorded
    refusal: str | None = None  # why Keyrack refused it (client_limit, client_model, priority, pool)
    asked: str | None = None  # the model the client named, once an alias or a fallback points `model` elsewhere
    models_tried: tuple[str, ...] = ()  # models whose pool had no headroom for this call (its fallback chain so far)

    @property
    def quota_model(self) -> str:
        """The quota bucket: Google counts countTokens apart from generation; listing costs nothing."""
        if not self.model:
            return "*"
        return f"{self.model}#count" if self.operation == "countTokens" else self.model


class CallDeadline(httpx.TimeoutException):
    """The call's overall deadline (`call_deadline_s`) passed during an attempt: accounted like a timeout."""


async def by_deadline(aw: Awaitable[T], deadline: float) -> T:
    """`await aw`, cancelled when the call's deadline passes (then CallDeadline)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await aw
    except TimeoutError:
        raise CallDeadline("the call deadline (call_deadline_s) passed") from None


_RETRY_TEXT = re.compile(r"(retry in\s+)(?:\d+(?:\.\d+)?(?:ns|us|µs|μs|ms|s|m|h))+", re.IGNORECASE)


def with_retry_delay(body: bytes, seconds: int) -> bytes:
    """A Google 429 body whose stated wait (message text and RetryInfo) is `seconds`, as the headers say.

    Unchanged when it already says so (same rounding) or is not a JSON error envelope; a message that states no
    wait gets one appended.
    """
    stated = parse_rate_limit(body).retry_delay_s
    if stated is not None and retry_after_s(stated) == seconds:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    envelope = doc[0] if isinstance(doc, list) and doc and isinstance(doc[0], dict) else doc
    err = envelope.get("error") if isinstance(envelope, dict) else None
    if not isinstance(err, dict):
        return body
    message = err["message"] if isinstance(err.get("message"), str) else ""
    if _RETRY_TEXT.search(message):
        err["message"] = _RETRY_TEXT.sub(lambda m: f"{m.group(1)}{seconds}s", message)
    else:
        err["message"] = f"{message.rstrip()} Please retry in {seconds}s.".lstrip()
    for detail in err.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            detail["retryDelay"] = f"{seconds}s"
    return (json.dumps(doc, indent=2) + "\n").encode()


def is_timeout(exc: BaseException) -> bool:
    """httpx-aiohttp maps every aiohttp connection error to ConnectTimeout: look at the real cause."""
    cause = exc.__cause__
    if cause is None:
        return isinstance(exc, httpx.TimeoutException)
    return isinstance(cause, (asyncio.TimeoutError, aiohttp.ServerTimeoutError))


def describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"[:500]


def classify(status: int, err_reason: str | None) -> AttemptOutcome:
    """What an upstream error answer says about the key: the status first, then ErrorInfo.reason."""
    if status == 429:
        return "rate_limited"
    if status in (401, 402, 403) or err_reason in ("API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED"):
        return "invalid_key"
    if status >= 500 or status == 408:
        return "server_error"
    return "client_error"


@dataclass(slots=True, frozen=True)
class FailedAttempt:
    """An upstream error answer to one attempt: what the client gets if it is the last one."""

    status: int
    body: bytes
    outcome: AttemptOutcome


@dataclass(slots=True)
class OpenedStream:
    """A stream whose first chunk arrived intact: from here on it is committed to the client."""

    first: bytes
    rest: AsyncIterator[bytes]


class Relay:
    def __init__(self, pool: Pool, writer: EventWriter, config: Callable[[], Config], clients: ClientBook) -> None:
        self.pool = pool
        self.writer = writer
        self.config = config
        self.clients = clients
        self.client: httpx.AsyncClient | None = None
        self._book = PriceBook({})
        self._book_of: object = None  # the `prices` setting the book was made from

    def price(self, ev: RequestEvent) -> None:
        """Fill the row's served model, tier and cost (arithmetic on its token counts; NULL cost when the model is
        unpriced or the answer had no usage)."""
        if ev.key_id is None:
            return
        cfg = self.config()
        if self._book_of is not cfg.prices:  # a config update replaces the dict: one new book per update
            self._book, self._book_of = PriceBook(cfg.prices), cfg.prices
        ev.served_model = ev.served_model or ev.model
        ev.tier = cfg.project_tiers.get(ev.project, "free") if ev.project else "free"
        ev.list_cost_usd = self._book.cost(
            ev.served_model, ev.prompt_tokens, ev.output_tokens, ev.thinking_tokens, ev.cached_tokens, ev.total_tokens
        )
        if ev.list_cost_usd is not None:
            ev.cost_usd = 0.0 if ev.tier == "free" else ev.list_cost_usd
            if ev.cost_usd:
                self.pool.spent(ev.cost_usd)  # toward paid_daily_cap_usd

    def admit(self, call: Call, spends: bool | None = None) -> None:
        """Count the call against its client's limits, or raise ClientRefused (the refusal noted on the call).
        `spends`: whether it spends the model's quota (default: a POST; reading a model's metadata does not), and so
        is weighed against the quota's scarcity by the client's class."""
        if call.client is None or call.admitted:
            return
        if spends is None:
            spends = call.method == "POST"
        try:
            self.clients.admit(call.client, call.model, call.quota_model if spends and call.model else None)
        except ClientRefused as exc:
            call.refusal = exc.refusal
            metrics.CLIENT_REFUSALS.labels(exc.refusal).inc()
            raise
        call.admitted = True

    @staticmethod
    def request_event(call: Call, status: int, outcome: str, attempts: int, key: Key | None = None) -> RequestEvent:
        """The call's request row with what every row has; callers set further fields as typed attributes."""
        return RequestEvent(
            ts=call.ts,
            request_id=call.request_id,
            client_id=call.client_id,
            client_label=call.client.label if call.client is not None else None,
            refusal=call.refusal,
            surface=call.surface,
            operation=call.operation,
            model=call.asked or call.model,
            served_model=call.model if key else None,
            stream=call.stream,
            status=status,
            outcome=outcome,
            attempts=attempts,
            key_id=key.id if key else None,
            project=key.project if key else None,
            request_bytes=len(call.body),
            resource_kind=call.resource_kind or (event_kind(call.resource) if call.resource else None),
            resource_id=call.resource,
        )

    def record_request(self, call: Call, ev: RequestEvent) -> None:
        if call.admitted and call.client is not None:  # every call ends here once: the client's slot and tokens
            call.admitted = False
            self.clients.release(call.client, ev.total_tokens, refund=ev.refusal == "pool")
        ev.latency_ms = (time.perf_counter() - call.started) * 1000
        # A key pasted where a model name goes ends up in the model column and in "Invalid model name '…'".
        if ev.error_message:
            ev.error_message = redact(ev.error_message)
        if ev.model and "AIza" in ev.model:
            ev.model = redact(ev.model)
        if ev.served_model and "AIza" in ev.served_model:
            ev.served_model = redact(ev.served_model)
        self.price(ev)
        self.writer.record(ev)
        # Unauthenticated calls and junk names never claim a metric label (anyone can send them): "other".
        label = "other" if call.junk_model or (call.client_id is None and ev.model) else ev.model
        metrics.observe_request(call.surface, label, ev.status, ev.latency_ms, ev.ttfb_ms)

    def record_error(
        self, call: Call, key: Key | None, status: int | None, error_type: str, message: str, **extra: str | None
    ) -> None:
        body = None
        if self.config().log_request_bodies and call.body:
            body = redact(call.body[:_BODY_CAP].decode("utf-8", "replace"))
        self.writer.record(
            ErrorEvent(
                id=uuid.uuid4().hex[:16],
                ts=utcnow(),
                request_id=call.request_id,
                key_id=key.id if key else None,
                model=call.model,
                status=status,
                error_type=error_type,
                message=redact(message)[:2000],
                request_body=body,
                **extra,
            )
        )

    def record_attempt(
        self, call: Call, n: int, key: Key, status: int | None, outcome: AttemptOutcome, t0: float, **extra: object
    ) -> None:
        """One `attempts` row for upstream try `n` of `call` (the Live surface records its connects here too)."""
        self.writer.record(
            AttemptEvent(
                ts=utcnow(),
                request_id=call.request_id,
                attempt=n,
                key_id=key.id,
                project=key.project,
                model=call.model,
                upstream_status=status,
                outcome=outcome,
                latency_ms=(time.perf_counter() - t0) * 1000,
                **extra,  # type: ignore[arg-type]
            )
        )
        metrics.ATTEMPTS.labels(outcome).inc()

    async def handle(self, call: Call) -> Response:
        """Forward `call`; raises KeyrackError for answers Keyrack gives itself (the surface formats them)."""
        assert self.client is not None
        self.admit(call)
        cfg = self.config()
        loop = asyncio.get_running_loop()
        # The whole call, retries included, gets `call_deadline_s` (a hanging upstream would otherwise hold the
        # client for (max_retries + 1) × request_timeout_s); a stream's deadline ends with its first chunk.
        call.deadline = loop.time() + cfg.call_deadline_s - (time.perf_counter() - call.started)
        if cfg.aliases and call.asked is None:
            routing.aliased(call, cfg.aliases)
        late = False
        tried: set[str] = set()
        last: FailedAttempt | None = None  # the last upstream error answer
        last_key: Key | None = None
        timed_out = False
        n = 0
        while n <= cfg.max_retries:
            if n and loop.time() >= call.deadline:
                late = timed_out = True
                break
            if self.pool.clustered and self.pool.strategy == "round_robin":
                await self.pool.turn(call.quota_model)  # a cluster-wide turn for choose() (no I/O when one waits)
            try:
                key = self.pool.choose(call.quota_model, tried, call.project)
            except PoolExhausted as exc:
                # No headroom left for this model (nothing tried, or every key tried said 429): its fallback chain.
                # Opted in by the client's record, else by the fallback_enabled setting.
                opted = call.client.fallback if call.client is not None else None
                if (cfg.fallback_enabled if opted is None else opted) and (
                    last_key is None or (last is not None and last.outcome == "rate_limited")
                ):
                    fallback = routing.next_fallback(call, cfg.fallbacks, {*call.models_tried, call.model or ""})
                    if fallback is not None:
                        call.models_tried += (call.model or "",)
                        routing.retarget(call, fallback)
                        return await self.handle(call)
                if last_key is not None:
                    # Attempts were made: the client gets what really happened (the last upstream answer, or
                    # 502/504 when every attempt died in transport), not a 429 claiming the pool is out of quota.
                    break
                call.refusal = "pool"
                ev = self.request_event(call, 429, "exhausted", n)
                ev.error_message = exc.message
                self.record_request(call, ev)
                self.record_error(call, None, 429, "exhausted", exc.message)
                raise
            if self.pool.clustered and not await self.pool.admit(key, call.quota_model):
                continue  # full or cooling on another replica: the scope now cools here too, choose() moves on
            n += 1
            tried.add(key.id)
            last_key = key
            self.pool.started(key, call.quota_model)
            t0 = time.perf_counter()
            headers = dict(call.headers)
            if call.surface == "openai":
                headers["authorization"] = f"Bearer {key.secret}"
            else:
                headers["x-goog-api-key"] = key.secret
            request = upstream_request(self.client, call.method, call.path, call.query, headers, call.body or None)
            try:
                resp = await by_deadline(send(self.client, request), call.deadline)
            except httpx.TransportError as exc:
                timed_out |= self._transport_failed(call, n, key, t0, exc)
                continue

            if not 100 <= resp.status_code <= 599:
                # Not HTTP (999, 0): passed on it would break the client's HTTP stack; a broken upstream instead.
                await resp.aclose()
                self.pool.finished(key)
                last = self._invalid_status(call, n, key, resp.status_code, t0)
                continue
            if resp.status_code == 200:
                if call.stream:
                    opened = await self._first_chunk(call, n, key, resp, t0)
                    if opened is None:
                        continue
                    if isinstance(opened, OpenedStream):
                        return self._stream(call, n, key, resp, opened.first, opened.rest, t0)
                    last = opened
                    if last.outcome == "client_error":
                        break
                    continue
                try:
                    body = await by_deadline(read_answer(resp, answer_cap(cfg)), call.deadline)
                except httpx.HTTPError as exc:
                    timed_out |= self._transport_failed(call, n, key, t0, exc, 200)
                    continue
                except AnswerTooLarge as exc:
                    self._too_large(call, n, key, 200, t0, exc)
                finally:
                    await resp.aclose()
                self.pool.finished(key)
                usage = self._usage(call, body)
                self.pool.succeeded(key, call.quota_model, usage.total if usage else None)
                self.record_attempt(call, n, key, 200, "ok", t0)
                if call.resource_kind is not None and call.method == "POST":
                    self._created(call, body)
                self.record_request(call, self._success_event(call, n, key, len(body), usage, None))
                return Response(body, 200, headers=self._response_headers(resp, call, key, n))

            try:
                body = await by_deadline(read_answer(resp, answer_cap(cfg, resp.status_code)), call.deadline)
            except httpx.HTTPError as exc:
                timed_out |= self._transport_failed(call, n, key, t0, exc, resp.status_code)
                continue
            except AnswerTooLarge as exc:
                self._too_large(call, n, key, resp.status_code, t0, exc)
            finally:
                await resp.aclose()
            self.pool.finished(key)
            last = self._failed_attempt(call, n, key, resp.status_code, body, t0)
            if last.outcome == "client_error":
                break
        if last is None or last_key is None:
            msg = (
                f"Upstream unreachable: {n} attempt(s) failed with {'timeouts' if timed_out else 'connection errors'}."
            )
            if late or loop.time() >= call.deadline:
                msg = f"Upstream gave no answer within the call deadline of {cfg.call_deadline_s:g} s ({n} attempt(s))."
            ev = self.request_event(call, 504 if timed_out else 502, "upstream_error", n)
            ev.key_id = last_key.id if last_key else None
            ev.error_message = msg
            self.record_request(call, ev)
            raise UpstreamUnreachable(msg, timed_out)
        return self._pass_error(call, n, last_key, last)

    def _transport_failed(
        self, call: Call, n: int, key: Key, t0: float, exc: httpx.HTTPError, status: int | None = None
    ) -> bool:
        """Account an attempt that got no complete upstream answer; True when it was a timeout."""
        self.pool.finished(key)
        timeout = is_timeout(exc)
        outcome: AttemptOutcome = "timeout" if timeout else "connection_error"
        self.pool.failed(
            key, f"{outcome}: {type(exc.__cause__ or exc).__name__}", None if timeout else call.quota_model
        )
        self.record_attempt(call, n, key, status, outcome, t0)
        self.record_error(call, key, status, outcome, f"attempt {n}: {describe(exc)}")
        return timeout

    def _too_large(self, call: Call, n: int, key: Key, status: int, t0: float, exc: AnswerTooLarge) -> NoReturn:
        """Refuse an answer over `max_answer_mb`: a 502 now, no retry (another key would get the same answer), and
        nothing held against the key (no cooldown, no failure count: the upstream served it)."""
        self.pool.finished(key)
        message = f"Keyrack refused an upstream answer: {exc} (attempt {n}, upstream status {status})."
        self.record_attempt(call, n, key, status, "too_large", t0)
        self.record_error(call, key, status, "answer_too_large", message)
        ev = self.request_event(call, 502, "upstream_error", n, key)
        ev.error_status, ev.error_message = "ANSWER_TOO_LARGE", message[:500]
        self.record_request(call, ev)
        raise BadUpstreamAnswer(message)

    def _invalid_status(self, call: Call, n: int, key: Key, status: int, t0: float) -> FailedAttempt:
        """An upstream status outside HTTP's 100..599: a failed attempt as a 502 in the surface's shape."""
        message = f"Upstream answered with an invalid HTTP status ({status}) on attempt {n}."
        body = openai_body(502, message) if call.surface == "openai" else google_body(502, message)
        return self._failed_attempt(call, n, key, 502, body, t0)

    def _failed_attempt(self, call: Call, n: int, key: Key, status: int, body: bytes, t0: float) -> FailedAttempt:
        err = parse_error(body)
        outcome = classify(status, err.reason)
        if outcome == "invalid_key" and status == 403 and err.reason is None and call.resource is not None:
            # A resource this project cannot see (expired, deleted, another project's): the call's fault, not the key's.
            outcome = "client_error"
        extra: dict[str, object] = {"error_status": err.status}
        if outcome == "rate_limited":
            violation = parse_rate_limit(body)
            self.pool.rate_limited(key, call.quota_model, violation)
            extra.update(quota_id=violation.quota_id, retry_delay_s=violation.retry_delay_s)
            metrics.RATE_LIMITS.labels(violation.kind).inc()
        elif outcome == "invalid_key":
            self.pool.invalid(key, f"{status} {err.reason or err.status}: {err.message}")
        elif outcome == "server_error":
            self.pool.failed(key, f"{status} {err.status}: {err.message}", call.quota_model)
        self.record_attempt(call, n, key, status, outcome, t0, **extra)
        if outcome != "client_error":
            self.record_error(
                call,
                key,
                status,
                outcome,
                err.message or f"upstream {status}",
                upstream_body=redact(body[:_BODY_CAP].decode("utf-8", "replace")),
            )
        return FailedAttempt(status, body, outcome)

    def _pass_error(self, call: Call, n: int, key: Key, last: FailedAttempt) -> Response:
        status, body = last.status, last.body
        err = parse_error(body)
        client_fault = last.outcome == "client_error"
        headers = {
            "content-type": "application/json; charset=UTF-8",
            "x-keyrack-request-id": call.request_id,
            "x-keyrack-attempts": str(n),
        }
        if status == 429:
            # The wait is the pool's earliest-usable time for the model (Google's own only when later), and the
            # body's "retry in …s" / retryDelay say the same number as the headers.
            upstream_wait = stated_wait(parse_rate_limit(body), time.time()) or 0.0
            pool_wait = self.pool.retry_after(call.quota_model)
            wait = retry_after_s(max(upstream_wait, self.pool.default_cooldown_s if pool_wait is None else pool_wait))
            body = with_retry_delay(body, wait)
            headers.update(retry_headers(wait))
        elif not client_fault:
            headers["x-should-retry"] = "false"  # Keyrack already retried on other keys
        upstream_body = body
        if call.surface == "openai":
            body = openai_error(status, body)  # Gemini's compat errors are a JSON array the openai SDK cannot read
        ev = self.request_event(call, status, "client_error" if client_fault else "upstream_error", n, key)
        ev.error_status = err.status
        ev.error_message = err.message[:500]
        ev.response_bytes = len(body)
        self.record_request(call, ev)
        if client_fault:
            self.record_error(
                call,
                key,
                status,
                "client_error",
                err.message or f"upstream {status}",
                upstream_body=redact(upstream_body[:_BODY_CAP].decode("utf-8", "replace")),
            )
        return Response(redact_body(body), status, headers=headers)

    async def _first_chunk(
        self, call: Call, n: int, key: Key, resp: httpx.Response, t0: float
    ) -> OpenedStream | FailedAttempt | None:
        """Wait for the stream's first bytes; a failure here is still retryable (nothing reached the client).

        Returns the stream to commit, an upstream error (status, body, outcome) if the stream opened
        with an error object, or None after a transport failure.
        """
        chunks = resp.aiter_raw()
        try:
            first = await by_deadline(anext(chunks, b""), call.deadline)
        except httpx.HTTPError as exc:
            await resp.aclose()
            self._transport_failed(call, n, key, t0, exc, 200)
            return None
        embedded = error_object_bytes(first) if has_error_object(first) else None
        if embedded is not None:
            # The upstream failed before sending anything useful: answer it like an ordinary error (retryable).
            await resp.aclose()
            self.pool.finished(key)
            err = parse_error(embedded)
            return self._failed_attempt(call, n, key, err.code or 500, embedded, t0)
        return OpenedStream(first, chunks)

    def _stream(
        self, call: Call, n: int, key: Key, resp: httpx.Response, first: bytes, chunks: AsyncIterator[bytes], t0: float
    ) -> Response:
        ttfb = (time.perf_counter() - call.started) * 1000
        self.record_attempt(call, n, key, 200, "ok", t0)

        async def body() -> AsyncIterator[bytes]:
            tail = first[-STREAM_TAIL:]
            sent = len(first)
            broken: str | None = None
            embedded = False
            outcome = "success"
            delivering = True  # a chunk is out to the client and its send has not returned yet
            try:
                yield first
                delivering = False
                async for chunk in chunks:
                    sent += len(chunk)
                    tail = (tail + chunk)[-STREAM_TAIL:]
                    embedded = embedded or has_error_object(chunk)
                    delivering = True
                    yield chunk
                    delivering = False
            except httpx.HTTPError as exc:
                broken = f"upstream stream broke after {sent} bytes: {type(exc).__name__}"
            except (asyncio.CancelledError, GeneratorExit):
                # A client that hangs up once it has the last event (finish reason, [DONE]) read the whole answer:
                # the stream was only waiting for the upstream to close it. Earlier, the answer was cut short.
                outcome = "success" if not delivering and stream_finished(tail) else "cancelled"
                raise
            finally:
                await resp.aclose()
                self.pool.finished(key)
                err = stream_error(tail) if embedded else None
                usage = self._usage(call, tail)
                error_status = message = None
                if broken or err:
                    outcome = "stream_error" if outcome == "success" else outcome
                    message = (
                        broken or f"upstream error inside the stream: {err[0] if err else ''} {err[1] if err else ''}"
                    )
                    error_status = err[2] if err else "STREAM_BROKEN"
                    self.pool.failed(key, message)
                    self.record_error(
                        call,
                        key,
                        err[0] if err else None,
                        "stream_error",
                        message,
                        upstream_body=redact(tail[-_BODY_CAP:].decode("utf-8", "replace")),
                    )
                else:
                    self.pool.succeeded(key, call.quota_model, usage.total if usage else None)
                ev = self._success_event(call, n, key, sent, usage, ttfb, outcome)
                ev.error_status, ev.error_message = error_status, message[:500] if message else None
                self.record_request(call, ev)
            if broken:
                # The client must not see a clean end (its library would hand over a partial answer as whole): an
                # error event where one can start, then the connection dropped without the final chunk.
                separator = next((s for s in (b"\r\n\r\n", b"\n\n") if tail.endswith(s)), None)
                if separator is not None:
                    yield sse_error_event(call.surface == "openai", 502, f"Keyrack: {broken}.", separator)
                raise StreamAborted(broken)
            if err is not None and call.surface == "openai" and error_outside_event(tail):
                # The upstream ended the stream with a bare JSON error, which the openai SDK skips (it would hand the
                # partial answer over as whole): the same error once more as an event in OpenAI's shape, which it
                # raises on.
                code = (err[2] or "stream_error").lower()
                yield b"\n" + sse_error_event(
                    True, err[0] or 502, err[1] or "Upstream error inside the stream.", error_code=code
                )

        return StreamingResponse(body(), 200, headers=self._response_headers(resp, call, key, n))

    @staticmethod
    def _created(call: Call, body: bytes) -> None:
        """A create's event names the resource it made (a cache's create body may name a file: the cache is meant)."""
        name = answered_name(body)
        if name is not None and event_kind(name) == call.resource_kind:
            call.resource = name

    def _usage(self, call: Call, data: bytes) -> Usage | None:
        return openai_usage(data) if call.surface == "openai" else gemini_usage(data)

    def _success_event(
        self, call: Call, n: int, key: Key, size: int, usage: Usage | None, ttfb: float | None, outcome: str = "success"
    ) -> RequestEvent:
        ev = self.request_event(call, 200, outcome, n, key)
        ev.ttfb_ms = ttfb
        ev.response_bytes = size
        if usage is not None:
            ev.prompt_tokens, ev.output_tokens = usage.prompt, usage.output
            ev.thinking_tokens, ev.cached_tokens, ev.total_tokens = usage.thinking, usage.cached, usage.total
        return ev

    @staticmethod
    def _response_headers(resp: httpx.Response, call: Call, key: Key, n: int) -> dict[str, str]:
        headers = {h: resp.headers[h] for h in (*_PASS_HEADERS, *call.answer_headers) if h in resp.headers}
        headers["x-keyrack-request-id"] = call.request_id
        headers["x-keyrack-key-id"] = key.id
        headers["x-keyrack-attempts"] = str(n)
        if call.asked is not None and call.asked != call.model:
            headers[routing.SERVED_MODEL_HEADER] = call.model or ""
        return headers

    def internal_error(self, call: Call, exc: BaseException) -> None:
        """Record a proxy-internal failure with its stack trace (the surface answers 500)."""
        ev = self.request_event(call, 500, "proxy_error", 0)
        ev.error_message = repr(exc)[:500]
        self.record_request(call, ev)
        self.record_error(
            call, None, 500, "proxy_error", repr(exc), stack_trace="".join(traceback.format_exception(exc))[-_BODY_CAP:]
        )
