"""The request path through real servers: the proxy under uvicorn in front of the fake upstream, driven by the real
google-genai SDK and raw httpx. One test per failure path of the pool."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from proxy_service.keys import key_id
from proxy_service.quota import next_pacific_midnight
from tests.conftest import BAD_1, CLIENT_TOKEN, P1_A, P1_B, P2_A, P3_A, POOL_KEYS, SCENARIO, Proxy, Upstream, wait_rows

MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


def sdk(proxy: Proxy) -> genai.Client:
    return genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=proxy.url))


def generate(proxy: Proxy, model: str = MODEL, **kw: Any) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/{model}:generateContent",
        json=kw.pop("body", BODY),
        headers=kw.pop("headers", {"x-goog-api-key": CLIENT_TOKEN}),
        timeout=30,
        **kw,
    )


def scenario(**kw: Any) -> dict[str, Any]:
    return {**SCENARIO, **kw}


def attempts(proxy: Proxy, request_id: str) -> list[tuple[Any, ...]]:
    return proxy.rows(
        "SELECT attempt, key_id, upstream_status, outcome, quota_id, retry_delay_s FROM attempts "
        "WHERE request_id = ? ORDER BY attempt",
        [request_id],
    )


def request_row(proxy: Proxy, request_id: str) -> dict[str, Any]:
    wait_rows(proxy, "SELECT 1 FROM requests WHERE request_id = ?", [request_id])
    cur = proxy.gateway.store.cursor()
    row = cur.execute("SELECT * FROM requests WHERE request_id = ?", [request_id]).fetchone()
    names = [d[0] for d in cur.description]
    cur.close()
    assert row is not None, "request not recorded"
    return dict(zip(names, row, strict=True))


# -- the SDK's ordinary calls ---------------------------------------------------------------------------------------


def test_google_genai_generate_stream_count_embed(proxy: Proxy, upstream: Upstream) -> None:
    client = sdk(proxy)
    reply = client.models.generate_content(model=MODEL, contents="Hello there")
    assert reply.text and reply.usage_metadata and reply.usage_metadata.total_token_count
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Stream please"))
    assert len(chunks) >= 2 and all(c.text is not None for c in chunks)
    assert client.models.count_tokens(model=MODEL, contents="abc def").total_tokens
    emb = client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
    assert emb.embeddings is not None and len(emb.embeddings) == 2
    models = list(client.models.list())
    assert any(m.name == f"models/{MODEL}" for m in models)

    rows = proxy.rows(
        "SELECT operation, status, outcome, attempts, total_tokens, ttfb_ms, stream FROM requests ORDER BY ts"
    )
    ops = [r[0] for r in rows]
    assert ops[:4] == ["generateContent", "streamGenerateContent", "countTokens", "batchEmbedContents"]
    assert all(r[1] == 200 and r[2] == "success" and r[3] == 1 for r in rows)
    gen, stream = rows[0], rows[1]
    assert gen[4] == reply.usage_metadata.total_token_count
    last_usage = chunks[-1].usage_metadata
    assert last_usage is not None and stream[4] == last_usage.total_token_count  # last chunk's running total
    assert stream[5] is not None and stream[6] is True
    # The client's token never went upstream: the fake only ever saw pool keys.
    assert set(upstream.stats()["by_key"]) <= {P1_A, P1_B, P2_A, P3_A}


def test_json_array_stream_passes_through_byte_for_byte(proxy: Proxy, upstream: Upstream) -> None:
    url = f"/v1beta/models/{MODEL}:streamGenerateContent"
    via_proxy = httpx.post(proxy.url + url, json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN})
    direct = httpx.post(upstream.url + url, json=BODY, headers={"x-goog-api-key": P1_A})
    assert via_proxy.status_code == 200 and via_proxy.headers["content-type"].startswith("application/json")
    assert via_proxy.text.lstrip().startswith("[") and via_proxy.text.rstrip().endswith("]")
    assert len(via_proxy.json()) == len(direct.json())  # same framing as the upstream's own answer
    row = request_row(proxy, via_proxy.headers["x-keyrack-request-id"])
    assert row["total_tokens"] and row["response_bytes"] == len(via_proxy.content)


# -- client errors and auth -----------------------------------------------------------------------------------------


def test_missing_or_wrong_client_token_is_401_and_recorded(proxy: Proxy) -> None:
    no_token = httpx.post(f"{proxy.url}/v1beta/models/{MODEL}:generateContent", json=BODY)
    wrong = generate(proxy, headers={"x-goog-api-key": "nope"})
    assert no_token.status_code == wrong.status_code == 401
    assert no_token.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "Missing client token" in no_token.json()["error"]["message"]
    assert "nope" not in wrong.text
    assert proxy.rows("SELECT count(*) FROM requests WHERE outcome = 'unauthorized'")[0][0] == 2
    ok = httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent?key={CLIENT_TOKEN}", json=BODY
    )  # ?key= works too
    assert ok.status_code == 200


def test_request_errors_pass_through_untouched_and_never_blame_a_key(proxy: Proxy, upstream: Upstream) -> None:
    unknown = generate(proxy, model="gemini-0-nonexistent")
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    bad_field = generate(proxy, body={"contents": [], "bogus": 1})
    assert bad_field.status_code == 400 and "bogus" in bad_field.json()["error"]["message"]
    for resp in (unknown, bad_field):
        assert [a[3] for a in attempts(proxy, resp.headers["x-keyrack-request-id"])] == ["client_error"]
        assert request_row(proxy, resp.headers["x-keyrack-request-id"])["outcome"] == "client_error"
    assert all(k.consecutive_failures == 0 and k.status == "active" for k in proxy.gateway.pool.keys.values())


def test_malformed_json_is_refused_without_spending_an_upstream_call(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()["requests"]
    resp = httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
        content=b"{not json",
        headers={"x-goog-api-key": CLIENT_TOKEN},
    )
    assert resp.status_code == 400 and "Invalid JSON payload" in resp.json()["error"]["message"]
    assert upstream.stats()["requests"] == before


# -- rate limits ----------------------------------------------------------------------------------------------------


def test_per_minute_429_cools_the_project_and_retries_elsewhere(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(limits={"default": {"rpm": 1}}))
    proxy = start_proxy(upstream.url, strategy="round_robin")
    results = [generate(proxy) for _ in range(3)]
    assert [r.status_code for r in results] == [200, 200, 200]
    limited = [a for r in results for a in attempts(proxy, r.headers["x-keyrack-request-id"]) if a[3] == "rate_limited"]
    assert limited, "round robin should have hit p1's second key after p1 used its one request"
    assert limited[0][2] == 429 and limited[0][4] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert 0 < limited[0][5] <= 60
    cooldown = proxy.gateway.pool.cooldowns[("p1", MODEL)]
    assert cooldown.reason == "minute" and time.time() < cooldown.until <= time.time() + 61
    # Another model of the same project is not cooled.
    assert ("p1", "gemini-2.5-pro") not in proxy.gateway.pool.cooldowns


def test_per_day_429_cools_until_pacific_midnight(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(projects={"p1": [P1_A, P1_B]}, limits={"default": {"rpd": 1}}))
    proxy = start_proxy(upstream.url, strategy="round_robin", api_keys=f"p1:{P1_A},p1:{P1_B}")
    assert generate(proxy).status_code == 200
    resp = generate(proxy)
    assert resp.status_code == 429  # the project's daily quota is gone: the real upstream 429 body comes back
    assert "GenerateRequestsPerDayPerProjectPerModel" in resp.text
    assert int(resp.headers["retry-after"]) > 60 and resp.headers["x-should-retry"] == "false"
    cd = proxy.gateway.pool.cooldowns[("p1", MODEL)]
    assert cd.reason == "day" and cd.until == pytest.approx(next_pacific_midnight(time.time()), abs=5)


def test_all_keys_cooling_answers_429_with_retry_after_at_once(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(limits={"default": {"rpm": 1}}))
    proxy = start_proxy(upstream.url, strategy="round_robin")
    codes = [generate(proxy).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    calls_before = upstream.stats()["requests"]
    resp = generate(proxy)
    assert resp.status_code == 429 and 1 <= int(resp.headers["retry-after"]) <= 61
    assert resp.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert upstream.stats()["requests"] == calls_before, "an exhausted pool must not burn upstream calls"
    client = sdk(proxy)
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents="hi")
    assert exc.value.code == 429
    assert proxy.rows("SELECT count(*) FROM requests WHERE outcome = 'exhausted'")[0][0] >= 2


# -- broken keys and a broken upstream --------------------------------------------------------------------------


def test_invalid_key_is_marked_and_the_call_succeeds_on_another(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin", api_keys=f"{BAD_1},{POOL_KEYS}")
    results = [generate(proxy) for _ in range(5)]
    assert all(r.status_code == 200 for r in results)
    bad = proxy.gateway.pool.keys[key_id(BAD_1)]
    assert bad.status == "invalid" and "API_KEY_INVALID" in (bad.last_error or "")
    outcomes = [a[3] for r in results for a in attempts(proxy, r.headers["x-keyrack-request-id"])]
    assert outcomes.count("invalid_key") == 1  # never tried again once marked
    assert proxy.rows("SELECT status FROM keys WHERE key_id = ?", [bad.id]) == [("invalid",)]


def test_503_is_retried_on_other_keys_then_the_real_answer_is_returned(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(error_rates={"503": 1.0}))
    proxy = start_proxy(upstream.url, max_retries=2)
    resp = generate(proxy)
    assert resp.status_code == 503 and resp.json()["error"]["status"] == "UNAVAILABLE"
    assert resp.headers["x-should-retry"] == "false"
    tried = attempts(proxy, resp.headers["x-keyrack-request-id"])
    assert [a[3] for a in tried] == ["server_error"] * 3 and len({a[1] for a in tried}) == 3
    row = request_row(proxy, resp.headers["x-keyrack-request-id"])
    assert row["outcome"] == "upstream_error" and row["attempts"] == 3
    upstream.set_scenario(SCENARIO)
    assert generate(proxy).status_code == 200
    assert proxy.rows("SELECT count(*) FROM error_logs WHERE error_type = 'server_error'")[0][0] == 3


def test_timeouts_retry_then_answer_504(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(error_rates={"timeout": 1.0}, timeout_s=3))
    proxy = start_proxy(upstream.url, max_retries=1, request_timeout_s=0.3)
    resp = generate(proxy)
    assert resp.status_code == 504 and "timeouts" in resp.json()["error"]["message"]
    assert [a[3] for a in attempts(proxy, resp.headers.get("x-keyrack-request-id", "") or _last_id(proxy))] == [
        "timeout",
        "timeout",
    ]


def _last_id(proxy: Proxy) -> str:
    return proxy.rows("SELECT request_id FROM requests ORDER BY ts DESC LIMIT 1")[0][0]


def test_connection_reset_is_retried_on_another_key(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(error_rates={"reset": 1.0}))
    proxy = start_proxy(upstream.url, max_retries=1)
    resp = generate(proxy)
    assert resp.status_code == 502 and "connection errors" in resp.json()["error"]["message"]
    assert [a[3] for a in attempts(proxy, _last_id(proxy))] == ["connection_error", "connection_error"]


def test_midstream_error_is_not_retried_and_is_recorded(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    # Paced tokens so the first chunk reaches the client before the upstream fails.
    upstream = start_upstream(scenario(error_rates={"midstream": 1.0}, tokens_per_s=400))
    proxy = start_proxy(upstream.url)
    seen: list[str] = []
    client = sdk(proxy)
    with pytest.raises(genai_errors.APIError):
        for chunk in client.models.generate_content_stream(model=MODEL, contents="Tell me a long story"):
            seen.append(chunk.text or "")
    assert seen, "the client got the chunks sent before the failure"
    row = wait_rows(proxy, "SELECT outcome, attempts, status, error_status, request_id FROM requests")[0]
    assert row[0] == "stream_error" and row[2] == 200 and row[3] == "UNAVAILABLE"
    # Attempts whose stream failed before its first byte may be retried; the committed one (last) never is.
    tried = attempts(proxy, row[4])
    assert tried[-1][3] == "ok" and all(a[3] != "ok" for a in tried[:-1])
    assert upstream.stats()["requests"] == row[1] == len(tried)


def test_stream_that_fails_before_its_first_byte_is_retried(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(scenario(error_rates={"503": 1.0}))
    proxy = start_proxy(upstream.url, max_retries=1)
    resp = httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
        json=BODY,
        headers={"x-goog-api-key": CLIENT_TOKEN},
    )
    assert resp.status_code == 503  # a plain error answer, not a 200 stream
    assert [a[3] for a in attempts(proxy, resp.headers["x-keyrack-request-id"])] == ["server_error"] * 2
