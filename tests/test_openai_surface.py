"""The OpenAI-compatible surface, driven by the real `openai` SDK through the proxy to the fake upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import CLIENT_TOKEN, SCENARIO, Proxy, Upstream

MODEL = "gemini-2.5-flash"


def client(proxy: Proxy, prefix: str = "/v1", **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key=kw.pop("api_key", CLIENT_TOKEN), base_url=f"{proxy.url}{prefix}", **kw)


@pytest.mark.parametrize("prefix", ["/v1", "/v1beta/openai"])
def test_chat_stream_embeddings_models(proxy: Proxy, upstream: Upstream, prefix: str) -> None:
    oa = client(proxy, prefix)
    chat = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi there"}])
    assert chat.choices[0].message.content and chat.usage and chat.usage.total_tokens > 0

    pieces = []
    stream = oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Stream it"}], stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces)

    emb = oa.embeddings.create(model="gemini-embedding-001", input=["one", "two"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 10

    ids = [m.id for m in oa.models.list()]
    assert f"models/{MODEL}" in ids

    rows = proxy.rows(
        "SELECT operation, stream, status, outcome, prompt_tokens, output_tokens, total_tokens FROM requests "
        "WHERE surface = 'openai' ORDER BY ts"
    )
    assert [r[0] for r in rows] == ["chat.completions", "chat.completions", "embeddings", "models"]
    assert all(r[2] == 200 and r[3] == "success" for r in rows)
    assert rows[0][6] == chat.usage.total_tokens and rows[0][4] == chat.usage.prompt_tokens
    assert rows[1][1] is True and rows[1][6] and rows[1][6] > 0  # usage read from the stream's chunks
    # The pool key went upstream as Bearer; the client's token never did.
    assert CLIENT_TOKEN not in upstream.stats()["by_key"]


def test_bad_token_gets_openai_shaped_401(proxy: Proxy) -> None:
    oa = client(proxy, api_key="wrong-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 401
    body = exc.value.body
    assert isinstance(body, dict) and body["type"] == "authentication_error" and "wrong-token" not in str(body)


def test_bad_json_and_missing_model_are_400_in_openai_shape(proxy: Proxy, upstream: Upstream) -> None:
    before = upstream.stats()["requests"]
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", "content-type": "application/json"}
    bad = httpx.post(f"{proxy.url}/v1/chat/completions", content=b"{oops", headers=headers)
    missing = httpx.post(f"{proxy.url}/v1/chat/completions", json={"messages": []}, headers=headers)
    assert bad.status_code == missing.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error" and "not valid JSON" in bad.json()["error"]["message"]
    assert missing.json()["error"]["param"] == "model"
    assert upstream.stats()["requests"] == before


def test_upstream_errors_keep_their_real_status(proxy: Proxy) -> None:
    oa = client(proxy, max_retries=0)
    with pytest.raises(openai.NotFoundError) as exc:
        oa.chat.completions.create(model="gemini-0-nonexistent", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 404


def test_exhausted_pool_gives_a_429_the_sdk_can_act_on_without_a_storm(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream({**SCENARIO, "limits": {"default": {"rpm": 1}}})
    proxy = start_proxy(upstream.url, strategy="round_robin")
    oa = client(proxy, max_retries=0)
    messages = [{"role": "user", "content": "x"}]
    for _ in range(3):  # one request per project uses the whole minute's quota
        oa.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    upstream_calls = upstream.stats()["requests"]

    # Everything is cooling now: Keyrack answers at once, with the Retry-After / retry-after-ms headers the openai
    # SDK honours (it waits instead of retrying at once) and without spending an upstream call.
    raw = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages},
        headers={"authorization": f"Bearer {CLIENT_TOKEN}"},
    )
    assert raw.status_code == 429
    retry_after = int(raw.headers["retry-after"])
    assert 1 <= retry_after <= 61 and raw.headers["retry-after-ms"] == str(retry_after * 1000)
    assert raw.json()["error"]["type"] == "rate_limit_error"
    assert upstream.stats()["requests"] == upstream_calls, "a Keyrack 429 costs no upstream call"
