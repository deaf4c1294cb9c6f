"""Building upstream requests (the fast path builds what httpx's own build_request would), and reading what comes
back: a stream's end, an error's shape."""

from __future__ import annotations

import json

import httpx
import pytest

from proxy_service.upstream import error_outside_event, openai_error, stream_finished, upstream_request


def test_upstream_request_matches_what_build_request_sends() -> None:
    client = httpx.AsyncClient(base_url="http://upstream.test:8090", timeout=httpx.Timeout(300, connect=10))
    query: list[tuple[str, str | int | float | bool | None]] = [("alt", "sse")]
    headers = {"content-type": "application/json", "x-goog-api-key": "secret"}
    for _ in range(2):  # second time from the URL cache
        req = upstream_request(client, "POST", "/v1beta/models/m:streamGenerateContent", query, headers, b"{}")
        ref = client.build_request(
            "POST", "/v1beta/models/m:streamGenerateContent", params=query, headers=headers, content=b"{}"
        )
        assert req.url == ref.url and req.content == ref.content == b"{}"
        for name in ("host", "content-length", "content-type", "x-goog-api-key"):
            assert req.headers[name] == ref.headers[name]
        assert req.extensions["timeout"] == ref.extensions["timeout"]
    get = upstream_request(client, "GET", "/v1beta/models", [("pageSize", "1")], {"x-goog-api-key": "k"}, None)
    assert str(get.url) == "http://upstream.test:8090/v1beta/models?pageSize=1"
    assert "content-length" not in get.headers and get.content == b""
    assert headers == {"content-type": "application/json", "x-goog-api-key": "secret"}  # the caller's dict untouched


# -- reading the end of a stream and the shape of an error (issue 25, item 7) -------------------------------------

NATIVE_LAST = (
    b'data: {"candidates": [{"content": {"parts": [{"text": "Bye."}],"role": "model"},"finishReason": "STOP"}]}'
)
NATIVE_MID = b'data: {"candidates": [{"content": {"parts": [{"text": "Hi "}],"role": "model"},"index": 0}]}'
OPENAI_LAST = b'data: {"choices":[{"delta":{"content":"Bye."},"finish_reason":"stop","index":0}]}'
OPENAI_MID = b'data: {"choices":[{"delta":{"content":"Hi"},"finish_reason":null,"index":0}]}'


@pytest.mark.parametrize(
    ("tail", "finished"),
    [
        (NATIVE_MID + b"\r\n\r\n" + NATIVE_LAST + b"\r\n\r\n", True),
        (
            NATIVE_LAST + b"\r\n\r\n" + NATIVE_MID + b"\r\n\r\n",
            False,
        ),  # an earlier event's finish reason is not the end
        (NATIVE_MID + b"\r\n\r\n", False),
        (OPENAI_MID + b"\n\n" + OPENAI_LAST + b"\n\n", True),
        (OPENAI_MID + b"\n\n", False),  # finish_reason null
        (OPENAI_LAST + b"\n\ndata: [DONE]\n\n", True),
        (b'data: {"choices":[{"delta":{"content":"say \\"finish_reason\\": \\"stop\\""}}]}\n\n', False),  # text only
        (b'[{"candidates": [{"index": 0}]},\r\n{"candidates": [{"finishReason": "STOP"}]}]', True),  # JSON array
        (b'"finishReason": "MAX_TOKENS", "index": 0}]}\r\n\r\n', True),  # the tail inside one long last event
    ],
)
def test_stream_finished_reads_only_the_last_event(tail: bytes, finished: bool) -> None:
    assert stream_finished(tail) is finished


def test_a_bare_error_after_events_is_outside_any_event() -> None:
    bare = b'[\n  {\n    "error": {\n      "code": 503,\n      "message": "overloaded"\n    }\n  }\n]\n'
    assert error_outside_event(OPENAI_MID + b"\n\n" + bare)
    assert not error_outside_event(OPENAI_MID + b'\n\ndata: {"error": {"message": "x", "type": "api_error"}}\n\n')
    assert not error_outside_event(OPENAI_MID + b"\n\n")


@pytest.mark.parametrize(
    ("status", "body", "code", "param"),
    [
        (
            404,
            b'[{"error": {"code": 404, "message": "models/x-1 is not found for API version v1beta", "status": "NOT_FOUND"}}]',
            "model_not_found",
            "model",
        ),
        (400, b'[{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}]', "invalid_argument", None),
        (
            429,
            b'{"error": {"code": 429, "message": "slow", "status": "RESOURCE_EXHAUSTED"}}',
            "rate_limit_exceeded",
            None,
        ),
        (
            402,
            b'[{"error": {"code": 402, "message": "no credit", "status": "RESOURCE_EXHAUSTED"}}]',
            "insufficient_quota",
            None,
        ),
        (502, b"<html>Bad Gateway</html>", None, None),
    ],
)
def test_openai_error_unwraps_googles_envelope(status: int, body: bytes, code: str | None, param: str | None) -> None:
    err = json.loads(openai_error(status, body))["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
    assert err["message"] and (code is None or err["code"] == code)
    if status == 502:
        assert "Bad Gateway" in err["message"]


def test_openai_error_keeps_a_body_already_in_openai_shape_and_redacts_a_key() -> None:
    own = b'{"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": null}}'
    assert openai_error(400, own) == own
    leaked = b'[{"error": {"code": 400, "message": "key AIza' + b"x" * 35 + b' bad", "status": "INVALID_ARGUMENT"}}]'
    assert b"x" * 35 not in openai_error(400, leaked)
