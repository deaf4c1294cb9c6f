"""Errors on the OpenAI surface are always in OpenAI's shape (issue 25, item 7), driven by the real `openai` SDK.

Gemini's OpenAI-compatible endpoint answers errors with Google's envelope wrapped in a JSON array, which the SDK
cannot read (it raises a bare "Error code: 404"); Keyrack unwraps it into `{"error": {message, type, param, code}}`
with the upstream's message and status. Keyrack's own answers on that surface (every status it gives) are checked
to be in the same shape.
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

from tests.conftest import CLIENT_TOKEN, P1_A, Proxy, Upstream, wait_rows
from tests.reliability.harness import free_port
from tests.reliability.raw_upstream import RawRequest, RawUpstream, chunk, head, raw_upstream, send_json
from tests.reliability.test_broken_streams import openai_event

MODEL = "gemini-2.5-flash"
MESSAGES: Any = [{"role": "user", "content": "Hi"}]
AUTH = {"authorization": f"Bearer {CLIENT_TOKEN}"}


def client(proxy: Proxy, prefix: str = "/v1") -> openai.OpenAI:
    return openai.OpenAI(api_key=CLIENT_TOKEN, base_url=f"{proxy.url}{prefix}", max_retries=0, timeout=60)


def openai_error(resp: httpx.Response) -> dict[str, Any]:
    """The error object of an answer that must be in OpenAI's shape (exactly what the openai SDK reads)."""
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    doc = resp.json()
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), err
    return dict(err)


@pytest.mark.parametrize("prefix", ["/v1", "/v1beta/openai"])
@pytest.mark.parametrize("model", ["gemini-0-nonexistent", "gemini-9.9-ultra-preview", "my-tuned-thing"])
def test_an_unknown_model_raises_not_found_naming_the_model(proxy: Proxy, model: str, prefix: str) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client(proxy, prefix).chat.completions.create(model=model, messages=MESSAGES)
    assert exc.value.status_code == 404
    assert f"models/{model} is not found" in exc.value.message, exc.value.message
    body = exc.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found" and body["param"] == "model", body


def test_the_fake_answers_compat_errors_as_google_does_a_json_array(upstream: Upstream) -> None:
    """The fake is the oracle: its OpenAI-compatible errors are what Keyrack has to unwrap."""
    resp = httpx.post(
        f"{upstream.url}/v1beta/openai/chat/completions",
        json={"model": "gemini-0-nonexistent", "messages": MESSAGES},
        headers={"authorization": f"Bearer {P1_A}"},
    )
    assert resp.status_code == 404
    doc = resp.json()
    assert isinstance(doc, list) and doc[0]["error"]["status"] == "NOT_FOUND"


def test_an_upstream_400_is_unwrapped_with_its_message(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client(proxy).chat.completions.create(model=MODEL, messages=[])
    assert exc.value.status_code == 400
    assert "contents is not specified" in exc.value.message
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error" and body["code"] == "invalid_argument"


def _array_error(code: int, status: str, message: str, details: list[Any] | None = None) -> list[dict[str, Any]]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return [{"error": err}]


LEAKED = "Your API key was reported as leaked. Please use another API key."
OVERLOADED = "The model is overloaded. Please try again later."
RAW_ERRORS = {
    "403": ("403 Forbidden", _array_error(403, "PERMISSION_DENIED", LEAKED), openai.PermissionDeniedError),
    "400": (
        "400 Bad Request",
        _array_error(400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "x": Cannot find field.'),
        openai.BadRequestError,
    ),
    "503": ("503 Service Unavailable", _array_error(503, "UNAVAILABLE", OVERLOADED), openai.InternalServerError),
}


@pytest.mark.parametrize("case", list(RAW_ERRORS))
def test_an_upstream_json_array_error_reaches_the_sdk_in_openai_shape(
    case: str, start_proxy: Callable[..., Proxy]
) -> None:
    status, doc, exc_type = RAW_ERRORS[case]

    def answer(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        send_json(conn, status, doc)

    with raw_upstream(answer) as up:
        proxy = start_proxy(up.url, max_retries=0)
        with pytest.raises(exc_type) as exc:
            client(proxy).chat.completions.create(model=MODEL, messages=MESSAGES)
        assert exc.value.status_code == int(case)
        assert isinstance(exc.value.body, dict) and exc.value.body["message"] == doc[0]["error"]["message"]
        raw = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}, headers=AUTH)
    assert raw.status_code == int(case)
    err = openai_error(raw)
    assert err["code"] == doc[0]["error"]["status"].lower()


# -- Keyrack's own answers on the OpenAI surface ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/v1beta/openai/chat/completion"),
        ("GET", "/v1beta/openai/nothing/here"),
    ],
)
def test_an_unknown_route_is_a_404_in_openai_shape(proxy: Proxy, method: str, path: str) -> None:
    resp = httpx.request(method, f"{proxy.url}{path}", json={"model": MODEL}, headers=AUTH)
    assert resp.status_code == 404
    err = openai_error(resp)
    assert path in err["message"] and err["type"] == "not_found_error"


def test_the_native_surface_keeps_google_shape_for_unknown_routes(proxy: Proxy) -> None:
    resp = httpx.get(f"{proxy.url}/v1beta/nothing", headers={"x-goog-api-key": CLIENT_TOKEN})
    assert resp.status_code == 404 and resp.json()["error"]["status"] == "NOT_FOUND"


def test_a_wrong_method_is_a_405_in_openai_shape(proxy: Proxy) -> None:
    resp = httpx.get(f"{proxy.url}/v1/chat/completions", headers=AUTH)
    assert resp.status_code == 405
    openai_error(resp)


def test_keyrack_own_400_401_413_are_in_openai_shape(start_proxy: Callable[..., Proxy], upstream: Upstream) -> None:
    proxy = start_proxy(upstream.url, max_body_mb=0.01)
    url = f"{proxy.url}/v1/chat/completions"
    bad = httpx.post(url, content=b"{oops", headers={**AUTH, "content-type": "application/json"})
    unauthorised = httpx.post(url, json={"model": MODEL, "messages": MESSAGES}, headers={"authorization": "Bearer no"})
    big = httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": "x" * 20_000}]}, headers=AUTH)
    assert (bad.status_code, unauthorised.status_code, big.status_code) == (400, 401, 413)
    for resp in (bad, unauthorised, big):
        openai_error(resp)


def test_keyrack_own_502_is_in_openai_shape(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}", max_retries=0)  # nothing listens there
    with pytest.raises(openai.InternalServerError) as exc:
        client(proxy).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert exc.value.status_code == 502 and "Upstream unreachable" in exc.value.message
    resp = httpx.post(f"{proxy.url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}, headers=AUTH)
    assert resp.status_code == 502
    openai_error(resp)


@pytest.fixture
def stalling_upstream() -> Iterator[str]:
    release = threading.Event()

    def answer(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        release.wait(60)  # never answers before the proxy's read timeout

    with raw_upstream(answer) as up:
        try:
            yield up.url
        finally:
            release.set()


def test_keyrack_own_504_is_in_openai_shape(stalling_upstream: str, start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(stalling_upstream, max_retries=0, request_timeout_s=1)
    resp = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES}, headers=AUTH, timeout=60
    )
    assert resp.status_code == 504
    assert openai_error(resp)["type"] == "api_error"


def test_an_error_the_upstream_appends_to_a_stream_makes_the_sdk_raise(start_proxy: Callable[..., Proxy]) -> None:
    """Google ends a failing stream with a bare (array-wrapped) JSON error that an SSE parser skips: without an event
    in OpenAI's shape the openai SDK would hand the first sentences over as a whole answer."""
    first_seen = threading.Event()
    bare = json.dumps(_array_error(503, "UNAVAILABLE", OVERLOADED), indent=2).encode() + b"\n"

    def answer(conn: socket.socket, request: RawRequest, up: RawUpstream) -> None:
        conn.sendall(head(ctype="text/event-stream") + chunk(openai_event("Hello. ")))
        first_seen.wait(60)  # the stream is committed to the client: the failure comes after its first event
        conn.sendall(chunk(bare) + b"0\r\n\r\n")

    seen: list[str] = []
    with raw_upstream(answer) as up:
        proxy = start_proxy(up.url, max_retries=0)
        try:
            with pytest.raises(openai.APIError) as exc:
                for c in client(proxy).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                    seen.extend(ch.delta.content or "" for ch in c.choices)
                    first_seen.set()
        finally:
            first_seen.set()
    assert seen == ["Hello. "] and "overloaded" in exc.value.message
    rows = wait_rows(proxy, "SELECT outcome, error_status FROM requests WHERE stream", timeout=60)
    assert rows == [("stream_error", "UNAVAILABLE")]
