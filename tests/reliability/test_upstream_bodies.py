"""Every upstream body bounded (issue 23, class 4, the upstream half): a non-stream answer is read with a size cap
(`max_answer_mb`, counted as it arrives) and a time cap (the call deadline). Over the cap the client gets a clear 502
in its surface's shape, the call is recorded, and the key is not blamed (no cooldown, no failure count). The
proxy's memory stays small while a hostile upstream sends far more than the cap. Also here: an answer whose status
is not HTTP (999, a garbage status line) is a 502, never a dropped connection (LOW list).

Variants: declared (Content-Length) and chunked sizes, 200 and error statuses, both surfaces, a drip-fed answer, the
admin key check (`verify`) against an oversized answer.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, Proxy, wait_rows
from tests.reliability.harness import start_proxy as start_proxy_process
from tests.reliability.raw_upstream import RawRequest, RawUpstream, chunk, head, raw_upstream

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
CHAT = {"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MB = 2**20
_BLOCK = b'{"candidates": [{"content": {"parts": [{"text": "' + b"x" * (MB - 100) + b'"}]}}]}'[:MB]


def big_answer(size: int, status: str = "200 OK", declared: bool = False) -> Callable[..., None]:
    """An answer of `size` bytes written from one reused 1 MiB block (the test process stays small)."""

    def answer(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        extra = {"Content-Length": str(size)} if declared else None
        conn.sendall(head(status, extra=extra))
        left = size
        while left > 0:
            piece = _BLOCK[: min(left, MB)]
            conn.sendall(piece if declared else chunk(piece))
            up.add_sent(len(piece))
            left -= len(piece)
        if not declared:
            conn.sendall(b"0\r\n\r\n")

    return answer


def vm_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_a_huge_answer_is_a_502_and_the_proxy_stays_small(tmp_path: Path) -> None:
    """A real proxy process; the upstream sends 512 MiB (8 × the default cap) as one non-stream answer."""
    size = 512 * MB
    with raw_upstream(big_answer(size)) as up:
        proc, url = start_proxy_process(
            tmp_path, upstream_url=up.url, api_keys=POOL_KEYS, access_tokens=CLIENT_TOKEN, max_retries=0
        )
        try:
            before = vm_kb(proc.pid, "VmRSS")
            resp = httpx.post(f"{url}{GEN}", json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=120)
            peak = vm_kb(proc.pid, "VmHWM")
        finally:
            proc.stop()
    assert resp.status_code == 502, resp.text[:300]
    err = resp.json()["error"]
    assert err["status"] == "UNAVAILABLE" and "max_answer_mb" in err["message"]
    growth_mb = (peak - before) / 1024
    assert growth_mb < 150, f"the proxy grew by {growth_mb:.0f} MB reading a {size // MB} MiB answer"
    assert up.sent < size, "the proxy read the whole answer instead of stopping at the cap"


@pytest.fixture
def answer() -> Iterator[tuple[list[Callable[..., None]], str]]:
    """A raw upstream whose answer the test sets (a one-element list, replaced in place)."""
    slot: list[Callable[..., None]] = [big_answer(1)]
    with raw_upstream(lambda conn, req, up: slot[0](conn, req, up)) as up:
        yield slot, up.url


def keys_unblamed(proxy: Proxy) -> None:
    items = httpx.get(f"{proxy.url}/admin/api/keys", headers=ADMIN).json()["items"]
    for k in items:
        assert k["consecutive_failures"] == 0 and k["cooling"] == [] and k["status"] == "active", k


def call(proxy: Proxy, surface: str) -> httpx.Response:
    if surface == "openai":
        return httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {CLIENT_TOKEN}"},
            timeout=60,
        )
    return httpx.post(f"{proxy.url}{GEN}", json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=60)


@pytest.mark.parametrize("status", ["200 OK", "500 Internal Server Error"])
@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content_length"])
@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_an_answer_over_the_cap_is_a_502_in_the_surface_shape(
    surface: str,
    declared: bool,
    status: str,
    answer: tuple[list[Callable[..., None]], str],
    start_proxy: Callable[..., Proxy],
) -> None:
    slot, url = answer
    slot[0] = big_answer(3 * MB, status, declared)
    proxy = start_proxy(url, max_answer_mb=1, max_retries=2)
    resp = call(proxy, surface)
    assert resp.status_code == 502, resp.text[:300]
    err = resp.json()["error"]
    if surface == "openai":
        assert err["type"] == "api_error" and "MiB cap" in err["message"]
    else:
        assert err["code"] == 502 and err["status"] == "UNAVAILABLE" and "MiB cap" in err["message"]
    rows = wait_rows(proxy, "SELECT status, outcome, error_status, attempts FROM requests")
    assert rows == [(502, "upstream_error", "ANSWER_TOO_LARGE", 1)]  # not retried: any key gets the same answer
    assert proxy.rows("SELECT outcome FROM attempts") == [("too_large",)]
    assert proxy.rows("SELECT error_type FROM error_logs") == [("answer_too_large",)]
    keys_unblamed(proxy)
    # An answer under the cap still passes.
    slot[0] = big_answer(MB // 2)
    assert call(proxy, surface).status_code == 200


def test_an_error_answer_has_a_smaller_cap(
    answer: tuple[list[Callable[..., None]], str], start_proxy: Callable[..., Proxy]
) -> None:
    """An error body is parsed and redacted on the event loop: a few MB of it is refused even under max_answer_mb."""
    slot, url = answer
    slot[0] = big_answer(3 * MB, "503 Service Unavailable")
    proxy = start_proxy(url, max_answer_mb=64, max_retries=0)
    resp = call(proxy, "gemini")
    assert resp.status_code == 502 and "cap for error answers" in resp.json()["error"]["message"]
    keys_unblamed(proxy)


def test_a_drip_fed_answer_ends_at_the_call_deadline(
    answer: tuple[list[Callable[..., None]], str], start_proxy: Callable[..., Proxy]
) -> None:
    slot, url = answer

    def drip(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        conn.sendall(head())
        for _ in range(120):
            conn.sendall(chunk(b" "))
            time.sleep(0.5)

    slot[0] = drip
    proxy = start_proxy(url, call_deadline_s=3, request_timeout_s=60, max_retries=0)
    started = time.monotonic()
    resp = call(proxy, "gemini")
    assert resp.status_code == 504 and "call deadline" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 30


def test_the_key_check_reads_a_bounded_answer(
    answer: tuple[list[Callable[..., None]], str], start_proxy: Callable[..., Proxy]
) -> None:
    slot, url = answer
    slot[0] = big_answer(3 * MB)
    proxy = start_proxy(url, max_answer_mb=1)
    key = httpx.get(f"{proxy.url}/admin/api/keys", headers=ADMIN).json()["items"][0]["id"]
    resp = httpx.post(f"{proxy.url}/admin/api/keys/{key}/verify", headers=ADMIN, timeout=60)
    assert resp.status_code == 200
    result = resp.json()
    assert result["ok"] is False and "AnswerTooLarge" in result["message"], result
    keys_unblamed(proxy)


def _status_line(line: bytes) -> Callable[..., None]:
    def answer(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        body = json.dumps({"error": {"code": 999, "message": "odd"}}).encode()
        conn.sendall(line + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    return answer


@pytest.mark.parametrize(
    "line",
    [b"HTTP/1.1 999 Weird", b"HTTP/1.1 600 Too Much", b"HTTP/1.1 abc OK", b"SPDY/9 200 OK", b"garbage"],
    ids=["999", "600", "letters", "protocol", "garbage"],
)
@pytest.mark.parametrize("surface", ["gemini", "openai"])
def test_an_answer_that_is_not_http_is_a_clear_502(
    surface: str, line: bytes, answer: tuple[list[Callable[..., None]], str], start_proxy: Callable[..., Proxy]
) -> None:
    slot, url = answer
    slot[0] = _status_line(line)
    proxy = start_proxy(url, max_retries=1)
    resp = call(proxy, surface)  # a dropped connection raises here
    assert resp.status_code == 502, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert err["message"]
    rows = wait_rows(proxy, "SELECT status, outcome FROM requests")
    assert rows == [(502, "upstream_error")]
