"""The Live API through the pool: Google's `BidiGenerateContent` WebSocket session, relayed message by message.

Connect: the client's first message (`setup`, naming the model) is read before anything else, as Google does; then
the client token is checked and an upstream key is chosen for that model by the pool's rules, exactly as for a
`generateContent` call. The setup is retried on another key while nothing has reached the client: a key whose
project is out of quota (Google closes with 1011 and its quota message) cools down, an invalid key (1007 "API key
not valid") is marked invalid, a connect that fails in transport counts against the key. Once the upstream's first
answer (`setupComplete`) is relayed, the session is committed to that key and messages are passed through as they
come, in their own frame type, both ways.

Refusals close the socket with a code and a reason (at most 123 bytes, RFC 6455): 1008 for a bad client token, a
refused caller or a bad setup, 1013 "try again later" when no key has headroom (the reason says when one frees up),
1009 for a message over `live_max_frame_mb`, 1014 when no upstream could be reached, 1011 for Keyrack's own fault;
an upstream's refusal that is the client's own (unknown model, bad request) is passed on with Google's code.
Bounds: `live_max_frame_mb` both ways, `live_idle_timeout_s` without a message either way, `live_max_session_s`.

One session is one `requests` row (operation `BidiGenerateContent`, stream true): latency = the session's duration,
TTFB = until setupComplete, tokens summed over the session's `usageMetadata` messages (one per model turn),
bytes both ways; `error_status` says how it ended (`LIVE_CLIENT_CLOSED`, `LIVE_UPSTREAM_CLOSED`, `LIVE_IDLE_TIMEOUT`,
`LIVE_MAX_SESSION`, `LIVE_FRAME_TOO_LARGE`, `LIVE_UPSTREAM_ERROR`) and `error_message` the turns and close code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from proxy_service.errors import ClientRefused, KeyrackError, PoolExhausted, Unauthorized
from proxy_service.pool import Key
from proxy_service.quota import parse_rate_limit
from proxy_service.relay import AttemptOutcome, Call
from proxy_service.settings import is_model_name
from proxy_service.surfaces.common import authenticate, untrusted
from proxy_service.surfaces.live_wire import (
    SERVICE,
    VERSIONS,
    Refused,
    Usage,
    close_reason,
    message_data,
    upstream_ws_url,
)

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway

log = logging.getLogger("keyrack.live")
OPERATION = "BidiGenerateContent"
# Headers the upstream may need to interpret the session; the client's credentials never go on.
FORWARD_HEADERS = ("user-agent", "x-goog-api-client")
REFUSAL_WAIT_S = 10.0  # how long a refused caller's setup is waited for (an SDK sends it at once)


@dataclass
class Session:
    call: Call
    key: Key | None = None
    attempts: int = 0
    ttfb_ms: float | None = None
    sent: int = 0  # bytes from the client to upstream
    received: int = 0  # bytes from upstream to the client
    usage: Usage = field(default_factory=Usage)
    last_activity: float = field(default_factory=time.monotonic)
    client_gone: bool = False  # a send to the client failed: it left


def _version(ws: WebSocket) -> str | None:
    service: str = ws.path_params.get("service", "")
    return next((v for v in VERSIONS if service == f"google.ai.generativelanguage.{v}.{SERVICE}"), None)


class LiveRelay:
    """The Live route's logic over the gateway (pool, writer, settings)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    @property
    def frame_cap(self) -> int:
        return int(self.gw.settings.live_max_frame_mb * 1024 * 1024)

    async def endpoint(self, ws: WebSocket) -> None:
        version = _version(ws)
        if version is None:
            if str(ws.path_params.get("service", "")).endswith(f"{SERVICE}Constrained"):
                await self._no_ephemeral(ws)
            else:
                await ws.close(1008)  # not a Live path (before accept: the client sees HTTP 403)
            return
        call = Call("gemini", OPERATION, None, "GET", f"/ws/{version}", [], {}, b"", True, None)
        call.resource_kind = "live"
        session = Session(call)
        await ws.accept()
        upstream: ClientConnection | None = None
        try:
            try:
                call.client_id, call.client = authenticate(ws, self.gw)
                refusal: KeyrackError | None = None
            except KeyrackError as exc:
                refusal = exc
            # The setup is read before a refusal is sent, as Google does: a client that sends it at once (every SDK)
            # then reads the close frame's code and reason rather than a failed write. It is parsed only when the
            # caller is admitted.
            if refusal is not None:
                # An unknown caller waits for little and gets the refusal whatever its first message was.
                with contextlib.suppress(Refused):
                    await self._first_message(ws, session, REFUSAL_WAIT_S)
                raise refusal
            raw = await self._first_message(ws, session, self.gw.settings.live_idle_timeout_s)
            # A setup can carry a long system instruction: a large one is parsed off the event loop.
            setup = self._setup(raw) if len(raw) <= 65_536 else await asyncio.to_thread(self._setup, raw)
            call.model = self._model(setup)
            self.gw.relay.admit(call, spends=True)  # the client's own policy: a session is one call
            upstream = await self._open(ws, session, version, raw)
            await self._relay(ws, upstream, session)
        except Refused as exc:
            await self._close(ws, exc.code, exc.reason)
            self._record(session, exc.status, exc.outcome, exc.reason, None)
        except KeyrackError as exc:  # authentication and access refusals
            untrusted(call)
            outcome = "unauthorized" if isinstance(exc, Unauthorized) else "client_error"
            if isinstance(exc, ClientRefused):
                outcome = "refused"
            await self._close(ws, 1008, exc.message)
            self._record(session, exc.status_code, outcome, exc.message, exc.error_type)
        except Exception as exc:
            log.exception("internal error in a Live session (request %s)", call.request_id)
            await self._close(ws, 1011, f"Keyrack internal error (request {call.request_id}).")
            self.gw.relay.internal_error(call, exc)
        finally:
            if upstream is not None:
                await upstream.close()
            if session.key is not None:
                self.gw.pool.finished(session.key)

    async def _no_ephemeral(self, ws: WebSocket) -> None:
        """Ephemeral tokens (`auth_tokens/…`, the Constrained session) are Google's, minted for one project's key and
        checked by Google: Keyrack cannot choose the key for such a session, so it says so instead of a bare 403."""
        await ws.accept()
        with contextlib.suppress(TimeoutError):  # the SDKs send their setup first; the refusal is read after it
            await asyncio.wait_for(ws.receive(), 10)
        await self._close(
            ws, 1008, "Keyrack serves no ephemeral tokens: open BidiGenerateContent with a Keyrack client token."
        )

    # -- connect -----------------------------------------------------------------------------------------------------
    async def _first_message(self, ws: WebSocket, session: Session, wait_s: float) -> str | bytes:
        try:
            message = await asyncio.wait_for(ws.receive(), wait_s)
        except TimeoutError:
            raise Refused(1008, "Keyrack: no setup message within the idle timeout.", 408, "client_error") from None
        data = message_data(message)
        if data is None:
            raise Refused(1000, "", 499, "cancelled")
        self._check_size(data)
        session.sent += len(data)
        return data

    @staticmethod
    def _setup(data: str | bytes) -> dict[str, Any]:
        try:
            first = json.loads(data)
        except (ValueError, RecursionError):
            raise Refused(1007, "Invalid JSON payload received in the setup message.", 400, "client_error") from None
        if not isinstance(first, dict) or not isinstance(first.get("setup"), dict):
            raise Refused(1008, 'The first message of a Live session must be {"setup": {...}}.', 400, "client_error")
        setup: dict[str, Any] = first
        return setup

    def _check_size(self, data: str | bytes) -> None:
        if len(data) > self.frame_cap:
            raise self._too_large()

    def _too_large(self) -> Refused:
        mb = self.gw.settings.live_max_frame_mb
        return Refused(1009, f"Keyrack: a message exceeds the {mb:g} MB limit.", 413, "client_error")

    @staticmethod
    def _model(first: dict[str, Any]) -> str:
        model = first["setup"].get("model")
        name = model.removeprefix("models/") if isinstance(model, str) else ""
        if not is_model_name(name):
            raise Refused(
                1008, "setup.model must name a model, e.g. models/gemini-2.0-flash-live-001.", 400, "client_error"
            )
        return name

    async def _open(self, ws: WebSocket, session: Session, version: str, raw: str | bytes) -> ClientConnection:
        """A key chosen by the pool, its upstream session set up, and the upstream's first answer relayed."""
        gw, call = self.gw, session.call
        pool, cfg = gw.pool, gw.config
        model = call.quota_model
        url = upstream_ws_url(cfg.upstream_url, version)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.call_deadline_s
        tried: set[str] = set()
        last: Refused | None = None
        while session.attempts <= cfg.max_retries and loop.time() < deadline:
            if pool.clustered and pool.strategy == "round_robin":
                await pool.turn(model)
            try:
                key = pool.choose(model, tried)
            except PoolExhausted as exc:
                if last is not None:
                    break
                self.gw.relay.record_error(call, None, 429, "exhausted", exc.message)
                # The wait first: a close reason holds 123 bytes, and the detail is what may be cut.
                reason = f"Keyrack: no key has headroom for {call.model}; retry in {exc.retry_after}s. {exc.message}"
                raise Refused(1013, reason, 429, "exhausted") from None
            if pool.clustered and not await pool.admit(key, model):
                continue
            session.attempts += 1
            n = session.attempts
            tried.add(key.id)
            pool.started(key, model)
            t0 = time.perf_counter()
            headers = {h: ws.headers[h] for h in FORWARD_HEADERS if h in ws.headers}
            headers["x-goog-api-key"] = key.secret
            upstream: ClientConnection | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    upstream = await ws_connect(
                        url, additional_headers=headers, max_size=self.frame_cap, ping_interval=None, compression=None
                    )
                    await upstream.send(raw)
                    first = await upstream.recv()
            except ConnectionClosed as closed:
                pool.finished(key)
                last = self._refused_setup(session, key, n, t0, closed)
                if last.outcome == "client_error":
                    raise last from None
                continue
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if upstream is not None:
                    await upstream.close()
                pool.finished(key)
                timeout = isinstance(exc, TimeoutError)
                outcome: AttemptOutcome = "timeout" if timeout else "connection_error"
                pool.failed(key, f"{outcome}: {type(exc).__name__}", None if timeout else model)
                self._attempt(session, n, key, None, outcome, t0)
                self.gw.relay.record_error(call, key, None, outcome, f"attempt {n}: live connect: {type(exc).__name__}")
                last = Refused(1014, f"Keyrack: upstream unreachable ({n} attempt(s)).", 502, "upstream_error")
                continue
            self._attempt(session, n, key, 101, "ok", t0)
            session.key = key
            session.ttfb_ms = (time.perf_counter() - call.started) * 1000
            session.last_activity = time.monotonic()
            try:
                await self._to_client(ws, session, first)
            except (RuntimeError, OSError, WebSocketDisconnect):  # the client left during the setup
                await upstream.close()
                raise Refused(1000, "", 499, "cancelled") from None
            return upstream
        if last is None:
            raise Refused(1014, "Keyrack: upstream gave no answer within the call deadline.", 504, "upstream_error")
        raise last

    def _refused_setup(self, session: Session, key: Key, n: int, t0: float, closed: ConnectionClosed) -> Refused:
        """Upstream closed the session before its first answer: learn what it says about the key."""
        pool, call = self.gw.pool, session.call
        code = closed.rcvd.code if closed.rcvd else 1006
        reason = closed.rcvd.reason if closed.rcvd else ""
        lowered = reason.lower()
        if code == 1011 and ("quota" in lowered or "resource_exhausted" in lowered or "rate limit" in lowered):
            body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": reason}}
            violation = parse_rate_limit(body)
            pool.rate_limited(key, call.quota_model, violation)
            self._attempt(session, n, key, 429, "rate_limited", t0, quota_id=violation.quota_id)
            self.gw.relay.record_error(call, key, 429, "rate_limited", reason or "live: quota exceeded")
            wait = pool.retry_after(call.quota_model)
            when = f"; retry in {max(1, round(wait))}s" if wait is not None else ""
            return Refused(
                1013, f"Keyrack: every project is out of quota for {call.model}{when}.", 429, "upstream_error"
            )
        if code == 1007 and "api key" in lowered:
            pool.invalid(key, f"live 1007: {reason}")
            self._attempt(session, n, key, 400, "invalid_key", t0)
            self.gw.relay.record_error(call, key, 400, "invalid_key", reason)
            return Refused(1014, "Keyrack: upstream refused every key tried.", 502, "upstream_error")
        if code in (1000, 1006, 1011, 1012, 1013, 1014):
            pool.failed(key, f"live {code}: {reason}", call.quota_model)
            self._attempt(session, n, key, None, "server_error", t0)
            self.gw.relay.record_error(call, key, None, "server_error", f"live close {code}: {reason}")
            return Refused(1014, f"Keyrack: upstream closed the session ({code}).", 502, "upstream_error")
        self._attempt(session, n, key, 400, "client_error", t0)
        return Refused(code, reason, 400, "client_error")

    def _attempt(
        self, session: Session, n: int, key: Key, status: int | None, outcome: AttemptOutcome, t0: float, **extra: Any
    ) -> None:
        self.gw.relay.record_attempt(session.call, n, key, status, outcome, t0, **extra)

    # -- the session -------------------------------------------------------------------------------------------------
    async def _to_client(self, ws: WebSocket, session: Session, data: str | bytes) -> None:
        session.received += len(data)
        session.usage.read(data)
        if isinstance(data, str):
            await ws.send_text(data)
        else:
            await ws.send_bytes(data)

    async def _relay(self, ws: WebSocket, upstream: ClientConnection, session: Session) -> None:
        settings = self.gw.settings

        async def from_client() -> Refused:
            while True:
                message = await ws.receive()
                data = message_data(message)
                if data is None:
                    if message.get("code") == 1009:  # the WebSocket protocol's own cap (uvicorn's ws_max_size)
                        return self._too_large()
                    return Refused(1000, "", 200, "success")
                try:
                    self._check_size(data)
                except Refused as too_large:  # Keyrack ends the session: the client is told why
                    return too_large
                session.sent += len(data)
                session.last_activity = time.monotonic()
                await upstream.send(data)

        async def from_upstream() -> Refused:
            try:
                async for data in upstream:
                    session.last_activity = time.monotonic()
                    try:
                        await self._to_client(ws, session, data)
                    except (RuntimeError, OSError, WebSocketDisconnect):  # the client left: its end, not upstream's
                        session.client_gone = True
                        return Refused(1000, "", 200, "success")
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1006  # 1006: lost without a close frame
            reason = upstream.close_reason or ("upstream connection lost" if code == 1006 else "")
            clean = code in (1000, 1001)
            return Refused(
                code if code not in (1005, 1006, 1015) else 1011,
                reason,
                200 if clean else 502,
                "success" if clean else "stream_error",
            )

        async def watchdog() -> Refused:
            end = time.monotonic() + settings.live_max_session_s
            while True:
                now = time.monotonic()
                idle_end = session.last_activity + settings.live_idle_timeout_s
                if now >= end:
                    return Refused(
                        1001,
                        f"Keyrack: the session reached its maximum of {settings.live_max_session_s:g} s.",
                        200,
                        "success",
                    )
                if now >= idle_end:
                    return Refused(1001, f"Keyrack: no message for {settings.live_idle_timeout_s:g} s.", 200, "success")
                await asyncio.sleep(min(end, idle_end) - now)

        tasks = {
            asyncio.create_task(from_client(), name="client"),
            asyncio.create_task(from_upstream(), name="upstream"),
            asyncio.create_task(watchdog(), name="watchdog"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping: the session is still recorded, as Keyrack's end
            self._finish(session, "keyrack", Refused(1012, "Keyrack is stopping.", 200, "success"))
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        task = next(iter(done))
        try:
            end = task.result()
        except (ConnectionClosed, WebSocketDisconnect, OSError, RuntimeError) as exc:
            end = Refused(1011, f"Keyrack: session broken ({type(exc).__name__}).", 502, "stream_error")
        who = {"client": "client", "upstream": "upstream"}.get(task.get_name(), "keyrack")
        if session.client_gone:
            who = "client"
        if end.code == 1009 and who == "client":
            who = "keyrack"
        if who != "upstream":
            await upstream.close(1000 if who == "client" else 1001)
        if who != "client":
            await self._close(ws, end.code, end.reason)
        self._finish(session, who, end)

    def _finish(self, session: Session, who: str, end: Refused) -> None:
        pool, call, key = self.gw.pool, session.call, session.key
        usage = session.usage
        assert key is not None
        if end.outcome != "stream_error":  # the key served the session (however the client or Keyrack ended it)
            pool.succeeded(key, call.quota_model, usage.total)
        if end.code == 1009:
            status = "LIVE_FRAME_TOO_LARGE"
        elif who == "keyrack":
            status = {1012: "LIVE_SERVER_STOPPING"}.get(end.code) or (
                "LIVE_MAX_SESSION" if "maximum" in end.reason else "LIVE_IDLE_TIMEOUT"
            )
        elif who == "client":
            status = "LIVE_CLIENT_CLOSED"
        else:
            status = "LIVE_UPSTREAM_CLOSED" if end.outcome == "success" else "LIVE_UPSTREAM_ERROR"
        reason = f": {end.reason}" if end.reason else ""
        message = f"live session: {usage.turns} turn(s); closed by {who} ({end.code}{reason})"
        self._record(session, end.status, end.outcome, message, status)

    async def _close(self, ws: WebSocket, code: int, reason: str) -> None:
        with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):  # the client has already gone
            await ws.close(code, close_reason(reason))

    def _record(self, session: Session, status: int, outcome: str, message: str, error_status: str | None) -> None:
        call, relay = session.call, self.gw.relay
        ev = relay.request_event(call, status, outcome, session.attempts, session.key)
        ev.ttfb_ms = session.ttfb_ms
        ev.request_bytes, ev.response_bytes = session.sent, session.received
        usage = session.usage
        ev.prompt_tokens, ev.output_tokens, ev.total_tokens = usage.prompt, usage.output, usage.total
        ev.thinking_tokens, ev.cached_tokens = usage.thinking, usage.cached
        ev.error_status = error_status
        ev.error_message = message[:500] or None
        relay.record_request(call, ev)


def routes(gw: Gateway) -> list[WebSocketRoute]:
    live = LiveRelay(gw)
    # The JS SDK (@google/genai) joins its base URL, which URL() ends with "/", and "/ws/…": its Live sessions
    # arrive on "//ws/…" (Google's front end takes both).
    return [WebSocketRoute("/ws/{service}", live.endpoint), WebSocketRoute("//ws/{service}", live.endpoint)]
