"""The upstream side: one shared HTTP client for the app's lifetime, and what Keyrack reads from answers.

The client keeps httpx's API on aiohttp's transport: at 32 concurrent requests plain httpx's own transport is
several times slower (bench/proxy_throughput.py measures both in one run). Bodies are never re-encoded;
usage and errors are found by searching the bytes from the end (the usage object is at the tail of every
answer and of the last stream chunk), so a large answer costs one `rfind` plus a small parse.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from proxy_service.errors import openai_body
from proxy_service.keys import redact
from proxy_service.settings import Config

_DECODER = json.JSONDecoder()
# An error object that is JSON structure, not text inside a string (where quotes are escaped).
_ERROR_RE = re.compile(rb'(?<!\\)"error"\s*:\s*\{')
STREAM_TAIL = 16384
# Token counts land in INTEGER columns and in the quota tracker: anything else an upstream sends (10^30, -1, 1.5,
# true, "12") is not a count.
MAX_COUNT = 2**31 - 1
ERROR_ANSWER_CAP = 2**20


class UpstreamClient(httpx.AsyncClient):
    """An httpx client that keeps the one transport it was built with, so `send` can call it directly."""

    def __init__(self, transport: httpx.AsyncBaseTransport, **kwargs: object) -> None:
        super().__init__(transport=transport, **kwargs)  # type: ignore[arg-type]
        self.transport = transport


def build_client(config: Config) -> UpstreamClient:
    timeout = httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
    transport = AiohttpTransport(
        limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        proxy=httpx.Proxy(config.outbound_proxy) if config.outbound_proxy else None,
        trust_env=False,
    )
    return UpstreamClient(transport, base_url=config.upstream_url, timeout=timeout)


_URLS: dict[tuple[object, ...], tuple[httpx.URL, str]] = {}
_URL_CACHE_MAX = 1024


def upstream_request(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    query: list[tuple[str, str | int | float | bool | None]],
    headers: dict[str, str],
    content: bytes | None,
) -> httpx.Request:
    """What `client.build_request(method, path, params=query, headers=headers, content=content)` builds, cheaper.

    The request path repeats a handful of URLs (one per model and method), so the merged URL is cached instead of
    being parsed and joined with the base URL on every call; the body is already in memory, so the request is
    made from a ready stream with its Host and Content-Length set here, skipping httpx's header merging. Together a
    noticeable share of the proxy's CPU per request. The client's default headers (httpx's user-agent and
    accept) and its cookie jar are not sent: upstream needs neither.
    """
    cache_key = (client.base_url, path, *query)
    hit = _URLS.get(cache_key)
    if hit is None:
        url = client.build_request(method, path, params=query).url
        hit = (url, url.netloc.decode("ascii"))
        if len(_URLS) >= _URL_CACHE_MAX:
            _URLS.clear()
        _URLS[cache_key] = hit
    url, host = hit
    body = content or b""
    headers = {**headers, "host": host}
    if body or method in ("POST", "PUT", "PATCH"):
        headers["content-length"] = str(len(body))
    request = httpx.Request(
        method, url, headers=headers, stream=httpx.ByteStream(body), extensions={"timeout": client.timeout.as_dict()}
    )
    request.read()  # marks the in-memory body as read: the transport sends it whole, with its Content-Length
    return request


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`client.send(request, stream=True)`, straight to the transport the client was built with.

    Skips httpx's per-request machinery that Keyrack never uses (auth flow, redirect loop, cookie jar, event
    hooks): a noticeable share of the proxy's CPU per request. The answer streams exactly as from `client.send`,
    and transport failures raise the same httpx exceptions (the aiohttp transport maps them; an unparseable answer
    too). Only public API: the transport's `handle_async_request`; a client not built by `build_client` goes through
    `client.send`.
    """
    try:
        if isinstance(client, UpstreamClient):
            return await client.transport.handle_async_request(request)
        return await client.send(request, stream=True)
    except aiohttp.ClientResponseError as exc:
        # An answer aiohttp cannot parse (a status line that is not HTTP) escapes the transport's mapping: a protocol
        # error like any other broken answer, so the relay retries it and answers 502 rather than crash.
        raise httpx.RemoteProtocolError(f"invalid upstream answer: {exc.message}"[:300], request=request) from exc


class AnswerTooLarge(Exception):
    """An upstream answer over the cap (`max_answer_mb`): its reading stopped there."""

    def __init__(self, size: int, cap: int, declared: bool, error: bool = False) -> None:
        self.size, self.cap = size, cap
        what = f"declared {size:,} bytes" if declared else f"went past {cap:,} bytes"
        which = "for error answers" if error else "(max_answer_mb)"
        super().__init__(f"the upstream answer {what}, over the {cap / 2**20:g} MiB cap {which}")


async def read_answer(resp: httpx.Response, cap: int) -> bytes:
    """The whole (decoded) answer, counted as it arrives: past `cap` bytes the read stops with AnswerTooLarge and
    what was read is dropped, so an oversized answer never sits in memory. The transport reads ahead only a
    bounded buffer (aiohttp's flow control), and the pieces are joined once, as `aread` does."""
    declared = resp.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise AnswerTooLarge(int(declared), cap, declared=True, error=resp.status_code != 200)
    parts: list[bytes] = []
    size = 0
    async for part in resp.aiter_bytes():
        size += len(part)
        if size > cap:
            raise AnswerTooLarge(size, cap, declared=False, error=resp.status_code != 200)
        parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def answer_cap(config: Config, status: int = 200) -> int:
    """The size cap of an answer: `max_answer_mb`, and for an error answer at most ERROR_ANSWER_CAP (Keyrack parses
    and redacts error bodies on the event loop; Google's are a few KB)."""
    cap = int(config.max_answer_mb * 2**20)
    return cap if status == 200 else min(cap, ERROR_ANSWER_CAP)


def client_settings(config: Config) -> tuple[object, ...]:
    """The config fields that require a new client when they change."""
    return (config.upstream_url, config.outbound_proxy, config.connect_timeout_s, config.request_timeout_s)


@dataclass(slots=True)
class Usage:
    prompt: int | None = None
    output: int | None = None
    thinking: int | None = None
    cached: int | None = None
    total: int | None = None


def _object_after(data: bytes, marker: bytes) -> dict[str, object] | None:
    """Parse the JSON object that follows the last `marker` ("key":) in `data`."""
    at = data.rfind(marker)
    if at < 0:
        return None
    brace = data.find(b"{", at + len(marker))
    if brace < 0:
        return None
    try:
        text = data[brace:].decode("utf-8", "replace")
        obj, _end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _int(v: object) -> int | None:
    """A token count as the upstream sent it, or None when it is not one (bool is not an int; 0 ≤ n < 2^31)."""
    return v if type(v) is int and 0 <= v <= MAX_COUNT else None


def _status(v: object) -> int | None:
    """An HTTP status code found in an error body (100..599), or None."""
    return v if type(v) is int and 100 <= v <= 599 else None


def gemini_usage(data: bytes) -> Usage | None:
    """usageMetadata of a native answer; in streams the last chunk's running totals."""
    u = _object_after(data, b'"usageMetadata"')
    if u is None:
        return None
    return Usage(
        prompt=_int(u.get("promptTokenCount")),
        output=_int(u.get("candidatesTokenCount")),
        thinking=_int(u.get("thoughtsTokenCount")),
        cached=_int(u.get("cachedContentTokenCount")),
        total=_int(u.get("totalTokenCount")),
    )


def openai_usage(data: bytes) -> Usage | None:
    u = _object_after(data, b'"usage"')
    if u is None:
        return None
    details = u.get("completion_tokens_details")
    cached = u.get("prompt_tokens_details")
    return Usage(
        prompt=_int(u.get("prompt_tokens")),
        output=_int(u.get("completion_tokens")),
        thinking=_int(details.get("reasoning_tokens")) if isinstance(details, dict) else None,
        cached=_int(cached.get("cached_tokens")) if isinstance(cached, dict) else None,
        total=_int(u.get("total_tokens")),
    )


def has_error_object(chunk: bytes) -> bool:
    return b'"error"' in chunk and _ERROR_RE.search(chunk) is not None


# Where the last event of a stream starts (an SSE `data:` line, or a chunk's first key in a JSON-array stream), and
# a finish reason given in it (a string: `null` is no finish). JSON structure only, not text inside a string.
_EVENT_START = re.compile(rb'data:|(?<!\\)"(?:candidates|choices)"\s*:')
_FINISHED = re.compile(rb'(?<!\\)"(?:finishReason|finish_reason)"\s*:\s*"')


def stream_finished(tail: bytes) -> bool:
    """Whether a stream's bytes so far end with its last event: OpenAI's `data: [DONE]`, or an event (the last one)
    that carries a finish reason (Gemini ends its streams after that chunk)."""
    end = tail.rstrip()
    if end.endswith(b"data: [DONE]") or end.endswith(b"data:[DONE]"):
        return True
    start = None
    for start in _EVENT_START.finditer(end):  # noqa: B007 (we want the last match)
        pass
    # No event start in the tail: it lies inside one (long) last event, whose finish reason is then in the tail.
    return _FINISHED.search(end, start.start() if start is not None else 0) is not None


def error_object_bytes(data: bytes) -> bytes | None:
    """The bytes of the last `{"error": ...}` object embedded in stream data (to answer it as a plain error)."""
    m = None
    for m in _ERROR_RE.finditer(data):  # noqa: B007 (we want the last match)
        pass
    if m is None:
        return None
    brace = data.rfind(b"{", 0, m.start())
    if brace < 0:
        return None
    text = data[brace:].decode("utf-8", "replace")
    try:
        _obj, end = _DECODER.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return text[:end].encode()


def error_outside_event(data: bytes) -> bool:
    """Whether the last error object in stream data is bare JSON (Google appends one, pretty-printed, to a stream that
    fails after its first events) rather than inside an SSE `data:` event: an SSE parser such as the openai SDK's
    skips the bare kind, so the stream would read as complete."""
    m = None
    for m in _ERROR_RE.finditer(data):  # noqa: B007 (we want the last match)
        pass
    if m is None:
        return False
    line = data[data.rfind(b"\n", 0, m.start()) + 1 : m.start()]
    return not line.lstrip().startswith(b"data:")


def stream_error(data: bytes) -> tuple[int | None, str, str | None] | None:
    """(code, message, status) of an error object embedded in a stream, if any."""
    m = None
    for m in _ERROR_RE.finditer(data):  # noqa: B007 (we want the last match)
        pass
    if m is None:
        return None
    err = _object_after(data[m.start() :], b'"error"')
    if err is None:
        return (None, "stream ended with an unparseable error object", None)
    status = err.get("status")
    return (
        _status(err.get("code")),
        redact(str(err.get("message", ""))[:2000]),
        status[:100] if isinstance(status, str) else None,
    )


@dataclass(slots=True)
class UpstreamError:
    """What an upstream error body says, whichever surface it came from (native or list-wrapped)."""

    code: int | None
    status: str | None
    message: str
    reason: str | None  # ErrorInfo.reason, e.g. API_KEY_INVALID


def parse_error(body: bytes) -> UpstreamError:
    """What an upstream error body says; its text is redacted here, where it enters Keyrack (an upstream may echo
    a key), and bounded (it reaches key state, events and logs)."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return UpstreamError(None, None, redact(body[:300].decode("utf-8", "replace").strip()), None)
    if isinstance(doc, list) and doc:
        doc = doc[0]
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return UpstreamError(None, None, redact(str(doc)[:300]), None)
    reason = None
    details = err.get("details")
    for d in details if isinstance(details, list) else []:
        if isinstance(d, dict) and d.get("reason"):
            reason = str(d["reason"])[:100]
    status = err.get("status") or err.get("type")
    return UpstreamError(
        _status(err.get("code")),
        str(status)[:100] if status else None,
        redact(str(err.get("message", ""))[:2000]),
        reason,
    )


# OpenAI's `code` for what a Google error says, where OpenAI has a name for it; otherwise Google's status, lowercased.
_OPENAI_CODE = {"API_KEY_INVALID": "invalid_api_key", "RESOURCE_EXHAUSTED": "rate_limit_exceeded"}
_NOT_FOUND_MODEL = re.compile(r"^models/\S+ is not found")


def is_openai_error(body: bytes) -> bool:
    """Whether `body` is already an OpenAI-shaped error: `{"error": {"message": ..., "type": ...}}`."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and isinstance(err.get("type"), str)


def openai_error(status: int, body: bytes) -> bytes:
    """An upstream error answer for the OpenAI surface, in OpenAI's shape whatever the upstream sent.

    Gemini's OpenAI-compatible endpoint answers errors with Google's envelope wrapped in a JSON array
    (`[{"error": {"code", "message", "status"}}]`), which the openai SDK cannot read (it raises a bare "Error code:
    404"): the envelope is unwrapped into `{"error": {"message", "type", "param", "code"}}` with the upstream's
    message (redacted) and the same HTTP status. A body already in OpenAI's shape is kept; one that is not JSON
    becomes the message.
    """
    if is_openai_error(body):
        return body
    err = parse_error(body)
    message = err.message or f"Upstream error {status}."
    status_name = (err.status or "").upper()
    code = _OPENAI_CODE.get(err.reason or "") or _OPENAI_CODE.get(status_name)
    param = None
    if status == 402:  # Google: prepaid credit used up; OpenAI's name for an exhausted balance
        code = "insufficient_quota"
    elif status == 404 and _NOT_FOUND_MODEL.match(message):
        code, param = "model_not_found", "model"
    elif code is None and status_name.replace("_", "").isalpha():
        code = status_name.lower()
    return openai_body(status, message, param, code)
