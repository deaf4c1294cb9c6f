"""Bad input gets a precise error in the surface's own shape, is recorded like any request, never spends an
upstream call when Keyrack can judge it itself, and never puts a secret in a log line or an event row."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from proxy_service import logs
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, P1_A, SCENARIO, Proxy, Upstream

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
GOOG = {"x-goog-api-key": CLIENT_TOKEN}
BEARER = {"authorization": f"Bearer {CLIENT_TOKEN}"}


@pytest.fixture
def small(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> Iterator[tuple[Proxy, Upstream]]:
    upstream = start_upstream(SCENARIO)
    yield start_proxy(upstream.url, max_body_mb=0.01, log_request_bodies=True), upstream  # a 10 KB body limit


def google_error(resp: httpx.Response, status: int, needle: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == status and isinstance(err["status"], str) and needle in err["message"], err
    return err


def openai_error(resp: httpx.Response, status: int, needle: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"], err
    return err


def test_bad_requests_get_precise_errors_in_the_right_shape(small: tuple[Proxy, Upstream]) -> None:
    proxy, upstream = small
    calls_before = upstream.stats()["requests"]
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        answers = [
            # malformed JSON, both surfaces
            google_error(c.post(GEN, content=b'{"contents": [', headers=GOOG), 400, "Invalid JSON payload"),
            openai_error(c.post("/v1/chat/completions", content=b"{oops", headers=BEARER), 400, "not valid JSON"),
            openai_error(c.post("/v1/chat/completions", json=[1, 2], headers=BEARER), 400, "must be a JSON object"),
            # over the size limit: declared, and streamed without a content-length
            google_error(c.post(GEN, content=b"x" * 50_000, headers=GOOG), 413, "exceeds the 0.01 MB limit"),
            google_error(c.post(GEN, content=iter([b"y" * 8_000] * 4), headers=GOOG), 413, "exceeds the 0.01 MB limit"),
            openai_error(c.post("/v1/embeddings", content=b"z" * 50_000, headers=BEARER), 413, "0.01 MB"),
            # missing and wrong tokens
            google_error(c.post(GEN, json=BODY), 401, "Missing client token"),
            google_error(c.post(GEN, json=BODY, headers={"x-goog-api-key": "nope-wrong"}), 401, "Invalid client token"),
            openai_error(
                c.post("/v1/chat/completions", json={"model": "m"}, headers={"authorization": "Bearer x"}),
                401,
                "Invalid",
            ),
            # invalid model names
            google_error(
                c.post("/v1beta/models/bad model!:generateContent", json=BODY, headers=GOOG), 400, "Invalid model name"
            ),
            google_error(
                c.post("/v1beta/models/..%2F..%2Fetc:generateContent", json=BODY, headers=GOOG), 400, "Invalid model"
            ),
            google_error(
                c.post(f"/v1beta/models/{'m' * 300}:generateContent", json=BODY, headers=GOOG), 400, "Invalid model"
            ),
            openai_error(c.post("/v1/chat/completions", json={"messages": []}, headers=BEARER), 400, "'model'"),
            openai_error(
                c.post("/v1/chat/completions", json={"model": "a/../b"}, headers=BEARER), 400, "Invalid model"
            ),
            openai_error(
                c.post("/v1/chat/completions", json={"model": "gemini-2.5-flash", "stream": "yes"}, headers=BEARER),
                400,
                "'stream'",
            ),
            # unknown methods on a model
            google_error(
                c.post("/v1beta/models/gemini-2.5-flash:explode", json=BODY, headers=GOOG), 404, "Unknown method"
            ),
            google_error(c.get("/v1beta/models/gemini-2.5-flash:generateContent", headers=GOOG), 405, "use POST"),
        ]
    assert len(answers) == 17
    assert upstream.stats()["requests"] == calls_before, "Keyrack judged all of these without an upstream call"
    rows = proxy.rows("SELECT outcome, status, attempts FROM requests")
    assert len(rows) == 17 and all(r[2] == 0 for r in rows)
    assert sorted({r[0] for r in rows}) == ["client_error", "unauthorized"]


def test_unknown_paths_and_wrong_methods(proxy: Proxy) -> None:
    """In the shape of the surface the path belongs to: OpenAI's under /v1beta/openai and /v1 (but its native
    models resource), Google's elsewhere."""
    with httpx.Client(base_url=proxy.url, headers=GOOG) as c:
        for path in ("/", "/v2/models", "/v1beta/nothing", "/admin"):
            google_error(c.get(path), 404, "Unknown path")
        for path in ("/v1beta/openai/completions", "/v1/completions", "/v1/audio/speech"):
            openai_error(c.get(path), 404, "Unknown path")
        for method, path in (("DELETE", GEN), ("PUT", "/v1beta/models"), ("POST", "/healthz"), ("POST", "/metrics")):
            google_error(c.request(method, path, json=BODY), 405, f"Method {method} is not allowed")
        for method, path in (("GET", "/v1/chat/completions"), ("PATCH", "/v1/embeddings")):
            openai_error(c.request(method, path, json=BODY), 405, f"Method {method} is not allowed")


def test_absurd_query_parameters_are_answered_and_never_crash(proxy: Proxy, upstream: Upstream) -> None:
    with httpx.Client(base_url=proxy.url, headers=GOOG, timeout=30) as c:
        negative = c.get("/v1beta/models", params={"pageSize": "-5"})
        assert negative.status_code == 200 and negative.json()["models"]  # the upstream decides; it uses its default
        google_error(c.get("/v1beta/models", params={"pageSize": "many"}), 400, "Invalid value for pageSize")
        google_error(c.get("/v1beta/models", params={"pageToken": "%%%"}), 400, "Invalid page token")
        huge = c.get("/v1beta/models", params={"filter": "x" * 10_000, "pageSize": "2"})
        assert huge.status_code == 200 and len(huge.json()["models"]) == 2
        many = c.post(GEN, json=BODY, params=[(f"p{i}", "v") for i in range(500)])
        assert many.status_code == 200
    # The client's ?key= token is Keyrack's; it never went upstream with the other parameters.
    assert CLIENT_TOKEN not in str(upstream.stats()["by_key"])
    assert proxy.rows("SELECT count(*) FROM requests WHERE outcome = 'proxy_error'")[0][0] == 0


def test_bad_input_leaves_no_secret_in_logs_or_rows(
    small: tuple[Proxy, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, _ = small
    caplog.set_level(logging.DEBUG, logger="keyrack")
    upstream_key = "AIzaSy" + "Q" * 33
    with httpx.Client(base_url=proxy.url, timeout=30) as c:
        c.post(GEN, json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN + "-typo"})
        c.post(GEN, json=BODY, params={"key": ADMIN_TOKEN})
        c.post(GEN, json={**BODY, "unknownField": upstream_key}, headers=GOOG)  # upstream 400: body logged
        c.post(GEN, content=b'{"contents": "' + upstream_key.encode(), headers=GOOG)
        c.post("/v1/chat/completions", json={"model": upstream_key + "!"}, headers=BEARER)
        c.get("/admin/api/keys", headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
    text = "\n".join(logs.KeyValueFormatter().format(r) for r in caplog.records)
    for table in ("requests", "attempts", "error_logs"):
        text += "\n" + "\n".join(map(repr, proxy.rows(f"SELECT * FROM {table}")))
    assert "unknownField" in text  # the failing request's body was recorded…
    for secret in (CLIENT_TOKEN, ADMIN_TOKEN, upstream_key, P1_A):
        assert secret not in text, secret  # …with the key redacted, and no token anywhere
