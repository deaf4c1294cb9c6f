"""A stream the client read to its end is a success (issue 25, item 7), even when the client hangs up at once.

Google closes a stream just after its last event (the chunk with `finishReason`; on the OpenAI surface `data:
[DONE]`), and a client that has that event may close its connection before the upstream's close reaches Keyrack.
The raw upstream here sends a whole answer and then keeps the connection open, so the client's hang-up always comes
first: that call must be recorded as `success`, while a hang-up before the last event stays `cancelled`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import CLIENT_TOKEN, Proxy, wait_rows
from tests.reliability.raw_upstream import RawRequest, RawUpstream, chunk, head, raw_upstream
from tests.reliability.test_broken_streams import MODEL, events, whole

DEADLINE_S = 60.0  # generous: the machine may be loaded; the wait ends as soon as the row is there


class Held:
    """Sends `parts` (whole HTTP chunks) and then holds the stream open until released: no end from upstream."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.released = threading.Event()

    def __call__(self, conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        conn.sendall(head(ctype="text/event-stream"))
        for part in self.parts:
            conn.sendall(part)
        self.released.wait(DEADLINE_S)
        conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def held() -> Iterator[tuple[Held, str]]:
    h = Held()
    with raw_upstream(h) as up:
        try:
            yield h, up.url
        finally:
            h.released.set()


def request_for(surface: str) -> tuple[str, dict[str, Any]]:
    if surface == "openai":
        return "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    return f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse", {"contents": [{"parts": [{"text": "Hi"}]}]}


def read_until(proxy: Proxy, surface: str, marker: bytes) -> bytes:
    """Stream the answer until `marker` has arrived, then close the connection at once (as a client does that has
    what it wanted)."""
    path, body = request_for(surface)
    got = b""
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}"}
    with httpx.stream("POST", f"{proxy.url}{path}", json=body, headers=headers, timeout=DEADLINE_S) as resp:
        assert resp.status_code == 200
        for part in resp.iter_raw():
            got += part
            if marker in got:
                break
    return got


def outcome(proxy: Proxy) -> str:
    rows = wait_rows(proxy, "SELECT outcome FROM requests WHERE stream", timeout=DEADLINE_S)
    assert len(rows) == 1, rows
    return str(rows[0][0])


LAST = {"gemini": b'"finishReason": "STOP"', "openai": b"data: [DONE]"}


@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_a_stream_read_to_its_last_event_then_closed_is_a_success(
    surface: str, held: tuple[Held, str], start_proxy: Callable[..., Proxy]
) -> None:
    h, url = held
    h.parts = [chunk(e) for e in whole(surface)]
    proxy = start_proxy(url, max_retries=0)
    got = read_until(proxy, surface, LAST[surface])
    assert got.count(b"data:") == len(whole(surface))
    assert outcome(proxy) == "success"
    rows = proxy.rows("SELECT status, error_status FROM requests WHERE stream")
    assert rows == [(200, None)]


def test_an_openai_stream_closed_after_the_finish_reason_chunk_is_a_success(
    held: tuple[Held, str], start_proxy: Callable[..., Proxy]
) -> None:
    """Gemini's compat stream puts finish_reason on its last content chunk; a client may stop there, before [DONE]."""
    h, url = held
    h.parts = [chunk(e) for e in whole("openai")[:2]]
    proxy = start_proxy(url, max_retries=0)
    read_until(proxy, "openai", b'"finish_reason": "stop"')
    assert outcome(proxy) == "success"


@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_a_stream_closed_before_its_last_event_is_still_cancelled(
    surface: str, held: tuple[Held, str], start_proxy: Callable[..., Proxy]
) -> None:
    h, url = held
    h.parts = [chunk(e) for e in events(surface, 2)]
    proxy = start_proxy(url, max_retries=0)
    read_until(proxy, surface, b"Sentence 1.")
    assert outcome(proxy) == "cancelled"
