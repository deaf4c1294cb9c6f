"""Keyrack's own 429s say why, on both surfaces (issue 25, item 7).

A refusal by a *configured* limit, by a limit *learned* from Google's 429s and by every key *cooling* after
upstream 429s read differently. On the native surface the body carries Google's `QuotaFailure` (a quota id that
says per-minute or per-day) and `RetryInfo`, as Google's own 429s do, so a framework reading them (through
google-genai's `ClientError.details`) tells a daily exhaustion from a per-minute limit. On the OpenAI surface the
429 stays in OpenAI's shape, with the same reason in its message and a Retry-After header.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from proxy_service.quota import next_pacific_midnight
from tests.conftest import CLIENT_TOKEN, P1_A, P1_B, SCENARIO, Proxy, Upstream

MODEL = "gemini-2.5-flash"
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def generate(proxy: Proxy) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
        json=BODY,
        headers={"x-goog-api-key": CLIENT_TOKEN},
        timeout=60,
    )


def own_429(proxy: Proxy, tries: int = 12) -> httpx.Response:
    """Call until Keyrack itself refuses (a 429 no upstream attempt answered: no x-keyrack-attempts header)."""
    for _ in range(tries):
        resp = generate(proxy)
        if resp.status_code == 429 and "x-keyrack-attempts" not in resp.headers:
            return resp
    raise AssertionError(f"no 429 of Keyrack's own after {tries} calls (last: {resp.status_code} {resp.text[:300]})")


def detail(doc: dict[str, Any], type_: str) -> dict[str, Any]:
    found = [d for d in doc["error"].get("details", []) if d.get("@type") == type_]
    assert len(found) == 1, doc
    return dict(found[0])


def sdk_429(proxy: Proxy) -> genai_errors.ClientError:
    client = genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=proxy.url))
    with pytest.raises(genai_errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents="hi")
    assert exc.value.code == 429
    return exc.value


def check_retry(resp: httpx.Response, doc: dict[str, Any]) -> int:
    """RetryInfo, the message and the Retry-After header state one wait."""
    delay = detail(doc, RETRY_INFO)["retryDelay"]
    assert re.fullmatch(r"\d+s", delay), delay
    seconds = int(delay[:-1])
    assert resp.headers["retry-after"] == str(seconds)
    assert doc["error"]["message"].endswith(f"retry in {seconds}s.")
    return seconds


def test_a_configured_per_minute_limit_says_so_with_a_per_minute_quota_id(
    upstream: Upstream, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(upstream.url, model_limits={MODEL: {"rpm": 1}})
    resp = own_429(proxy)
    doc = resp.json()
    message = doc["error"]["message"]
    assert "configured limit of 1 request per minute" in message and "cooling" not in message, message
    violation = detail(doc, QUOTA_FAILURE)["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel"
    assert violation["quotaMetric"] == "keyrack/configured_limit" and violation["quotaValue"] == "1"
    assert violation["quotaDimensions"]["model"] == MODEL
    assert 1 <= check_retry(resp, doc) <= 60

    # What a framework reads through google-genai: the same details.
    details = sdk_429(proxy).details
    assert isinstance(details, dict)
    ids = [v["quotaId"] for d in details["error"]["details"] if d["@type"] == QUOTA_FAILURE for v in d["violations"]]
    assert ids == ["GenerateRequestsPerMinutePerProjectPerModel"]
    assert "PerDay" not in str(details)


def test_a_configured_per_day_limit_has_a_per_day_quota_id_and_the_wait_to_pacific_midnight(
    upstream: Upstream, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(upstream.url, model_limits={MODEL: {"rpd": 1}})
    resp = own_429(proxy)
    doc = resp.json()
    assert "configured limit of 1 request per day" in doc["error"]["message"]
    violation = detail(doc, QUOTA_FAILURE)["violations"][0]
    assert violation["quotaId"] == "GenerateRequestsPerDayPerProjectPerModel"
    seconds = check_retry(resp, doc)
    assert seconds == pytest.approx(next_pacific_midnight(time.time()) - time.time(), abs=120)
    assert resp.headers["x-should-retry"] == "false"

    details = sdk_429(proxy).details
    ids = [v["quotaId"] for d in details["error"]["details"] if d["@type"] == QUOTA_FAILURE for v in d["violations"]]
    assert ids == ["GenerateRequestsPerDayPerProjectPerModel"]


@pytest.mark.parametrize(
    ("kind", "quota_id"),
    [
        ("rpm", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
        ("rpd", "GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
    ],
)
def test_every_key_cooling_after_upstream_429s_says_so_with_googles_quota_id(
    kind: str, quota_id: str, start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream({**SCENARIO, "projects": {"p1": [P1_A, P1_B]}, "limits": {"default": {kind: 1}}})
    proxy = start_proxy(upstream.url, api_keys=f"p1:{P1_A},p1:{P1_B}")
    resp = own_429(proxy)
    doc = resp.json()
    message = doc["error"]["message"]
    assert "cooling down after Google answered 429" in message and "configured" not in message, message
    assert quota_id in message
    violation = detail(doc, QUOTA_FAILURE)["violations"][0]
    assert violation["quotaId"] == quota_id and violation["quotaMetric"] == "keyrack/upstream_429_cooldown"
    seconds = check_retry(resp, doc)
    if kind == "rpd":
        assert seconds > 3600 and resp.headers["x-should-retry"] == "false"
    else:
        assert seconds <= 61


def test_the_openai_surface_429_is_openai_shaped_and_says_why(
    upstream: Upstream, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy(upstream.url, model_limits={MODEL: {"rpm": 1}})
    oa = openai.OpenAI(api_key=CLIENT_TOKEN, base_url=f"{proxy.url}/v1", max_retries=0)
    messages: Any = [{"role": "user", "content": "Hi"}]
    for _ in range(12):
        try:
            oa.chat.completions.create(model=MODEL, messages=messages)
        except openai.RateLimitError as exc:
            refused = exc
            break
    else:
        raise AssertionError("no 429")
    assert "configured limit of 1 request per minute" in refused.message
    assert isinstance(refused.body, dict) and refused.body["code"] == "rate_limit_exceeded"
    assert set(refused.body) == {"message", "type", "param", "code"}
    assert 1 <= int(refused.response.headers["retry-after"]) <= 60
