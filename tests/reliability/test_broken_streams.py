"""Never a plausible success for a failure (issue 23, class 5): a 200 SSE stream that the upstream breaks after its
first event must end broken for the client on both surfaces, so the real `openai` and `google-genai` SDKs raise
(as they do straight from Google) instead of handing the application the first sentence as a whole answer. The
call is still recorded as `stream_error`.

Variants of the break: the connection closed after the first event, after several, in the middle of an event, in
the middle of an HTTP chunk, and a stall until the proxy's read timeout. A stream that ends properly is the control.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import types

from tests.conftest import CLIENT_TOKEN, Proxy, wait_rows
from tests.reliability.raw_upstream import RawRequest, RawUpstream, chunk, head, raw_upstream

MODEL = "gemini-2.5-flash"
USAGE = {"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8}


def gemini_event(text: str, last: bool = False) -> bytes:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    doc = {"candidates": [candidate], "usageMetadata": USAGE, "modelVersion": MODEL}
    return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"


def openai_event(text: str | None, finish: str | None = None) -> bytes:
    delta = {"role": "assistant", "content": text} if text is not None else {}
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def events(surface: str, n: int) -> list[bytes]:
    """The first `n` events of a longer answer (never its end)."""
    words = [f"Sentence {i}. " for i in range(n)]
    if surface == "gemini":
        return [gemini_event(w) for w in words]
    return [openai_event(w) for w in words]


def whole(surface: str) -> list[bytes]:
    if surface == "gemini":
        return [gemini_event("Hello. "), gemini_event("Bye.", last=True)]
    return [openai_event("Hello. "), openai_event(None, "stop"), b"data: [DONE]\n\n"]


def _after_first(surface: str) -> list[bytes]:
    return [chunk(e) for e in events(surface, 1)]


def _after_several(surface: str) -> list[bytes]:
    return [chunk(e) for e in events(surface, 4)]


def _mid_event(surface: str) -> list[bytes]:
    first, second = events(surface, 2)
    return [chunk(first), chunk(second[: len(second) // 2])]


def _mid_chunk(surface: str) -> list[bytes]:
    first, second = events(surface, 2)
    return [chunk(first), f"{len(second):x}\r\n".encode() + second[:10]]  # announced, then cut short


CUTS: dict[str, Callable[[str], list[bytes]]] = {
    "after_first_event": _after_first,
    "after_several_events": _after_several,
    "mid_event": _mid_event,
    "mid_chunk": _mid_chunk,
    "stall": _after_first,  # then nothing until the proxy's read timeout
}


class Script:
    """What the raw upstream sends on each stream request."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.stall = False
        self.complete = False
        self.released = threading.Event()

    def __call__(self, conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        conn.sendall(head(ctype="text/event-stream"))
        for part in self.parts:
            conn.sendall(part)
        if self.complete:
            conn.sendall(b"0\r\n\r\n")
            return
        if self.stall:
            self.released.wait(60)
        conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def script() -> Iterator[tuple[Script, str]]:
    s = Script()
    with raw_upstream(s) as up:
        try:
            yield s, up.url
        finally:
            s.released.set()


def gemini_stream(proxy: Proxy) -> str:
    client = genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=proxy.url, timeout=60_000))
    return "".join(c.text or "" for c in client.models.generate_content_stream(model=MODEL, contents="Hi"))


def openai_stream(proxy: Proxy) -> str:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=CLIENT_TOKEN, max_retries=0, timeout=60)
    out = []
    for c in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True):
        out.extend(ch.delta.content or "" for ch in c.choices)
    return "".join(out)


SDKS = {"gemini": gemini_stream, "openai": openai_stream}


@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_a_whole_stream_still_ends_cleanly(
    surface: str, script: tuple[Script, str], start_proxy: Callable[..., Proxy]
) -> None:
    s, url = script
    s.parts, s.complete = [chunk(e) for e in whole(surface)], True
    proxy = start_proxy(url, max_retries=0)
    assert SDKS[surface](proxy).startswith("Hello.")
    rows = wait_rows(proxy, "SELECT outcome FROM requests WHERE stream")
    assert rows == [("success",)]


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_a_stream_broken_upstream_makes_the_sdk_raise(
    surface: str, cut: str, script: tuple[Script, str], start_proxy: Callable[..., Proxy]
) -> None:
    s, url = script
    s.parts, s.stall = CUTS[cut](surface), cut == "stall"
    proxy = start_proxy(url, max_retries=0, request_timeout_s=2)
    got: str | None = None
    with pytest.raises(Exception) as raised:
        got = SDKS[surface](proxy)
    assert got is None, f"the SDK returned {got!r} as a complete answer"
    assert not isinstance(raised.value, AssertionError)
    rows = wait_rows(proxy, "SELECT outcome, error_status FROM requests WHERE stream", timeout=30)
    assert rows and rows[0][0] == "stream_error", rows


@pytest.mark.parametrize("cut", list(CUTS))
@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_the_client_connection_ends_without_a_clean_end(
    surface: str, cut: str, script: tuple[Script, str], start_proxy: Callable[..., Proxy]
) -> None:
    """Any client, not only the SDKs: the HTTP body is cut (no final chunk), never a [DONE] or finish reason."""
    s, url = script
    s.parts, s.stall = CUTS[cut](surface), cut == "stall"
    proxy = start_proxy(url, max_retries=0, request_timeout_s=2)
    if surface == "openai":
        path, body = (
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True},
        )
    else:
        path, body = (
            f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
            {"contents": [{"parts": [{"text": "Hi"}]}]},
        )
    got = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST", f"{proxy.url}{path}", json=body, headers={"authorization": f"Bearer {CLIENT_TOKEN}"}, timeout=60
        ) as resp,
    ):
        assert resp.status_code == 200
        for part in resp.iter_bytes():
            got += part
    assert b"[DONE]" not in got and b'"finish_reason": "stop"' not in got and b"finishReason" not in got
    assert b"Sentence 0." in got  # what the upstream did send came through
