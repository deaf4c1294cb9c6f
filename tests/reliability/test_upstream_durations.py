"""Upstream-supplied durations capped to what Google can mean (issue 23, class 8): a 429 whose `retryDelay` (or
"retry in …" text) is absurd — 10^20 s, 10^400, negative, NaN, a duration object of 10^300 s, hours by the
million — must not cool a key or project for ever, must not make the keys API fail, and must not put an absurd
Retry-After on the client's answer. A per-day quota ends at the next Pacific midnight; a per-minute one within
two minutes; nothing Google says waits past the next Pacific midnight.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service.quota import next_pacific_midnight
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, Proxy
from tests.servers import serve

GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
BODY = {"contents": [{"parts": [{"text": "hello"}]}]}
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MINUTE_Q = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
DAY_Q = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
MINUTE_CAP_S = 120

DELAYS: dict[str, Any] = {
    "1e20s": "100000000000000000000s",
    "400_digits": "9" * 400 + "s",
    "exponent": "1e400s",
    "negative": "-5s",
    "nan": "NaNs",
    "number_nan": float("nan"),
    "number_huge": 1e300,
    "object_huge": {"seconds": "1" + "0" * 30, "nanos": 0},
    "object_inf": {"seconds": 1e308, "nanos": 1e308},
}
MESSAGES = {
    "text_hours": "Please retry in 99999999999999999999999h.",
    "text_400_digits": "Please retry in " + "9" * 400 + "s.",
    "text_mixed": "Please retry in 5000000h30m2.5s.",
}


def rate_limit_body(quota_id: str | None, delay: Any, message: str = "Resource exhausted.") -> bytes:
    details: list[dict[str, Any]] = []
    if quota_id:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {"quotaMetric": "m", "quotaId": quota_id, "quotaDimensions": {"model": "gemini-2.5-flash"}}
                ],
            }
        )
    if delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
    doc = {"error": {"code": 429, "message": message, "status": "RESOURCE_EXHAUSTED", "details": details}}
    return json.dumps(doc).encode()  # NaN and 1e300 as Python writes them (Google's JSON parser would take them)


@pytest.fixture
def limited() -> Iterator[tuple[list[bytes], str]]:
    """A Google stand-in that answers every call with the 429 body the test sets."""
    body: list[bytes] = [b"{}"]

    async def any_path(request: Request) -> Response:
        return Response(body[0], 429, media_type="application/json")

    with serve(Starlette(routes=[Route("/{rest:path}", any_path, methods=["GET", "POST"])])) as url:
        yield body, url


def check_bounded(proxy: Proxy, quota_id: str | None) -> None:
    resp = httpx.post(f"{proxy.url}{GEN}", json=BODY, headers={"x-goog-api-key": CLIENT_TOKEN}, timeout=60)
    now = time.time()
    midnight = next_pacific_midnight(now)
    assert resp.status_code == 429, resp.text[:300]
    retry_after = int(resp.headers["retry-after"])
    assert 1 <= retry_after <= midnight - now + 2
    if quota_id == MINUTE_Q:
        assert retry_after <= MINUTE_CAP_S + 1
    json.loads(resp.content)  # the body (whose stated wait Keyrack rewrites) is still JSON

    keys = httpx.get(f"{proxy.url}/admin/api/keys", headers=ADMIN, timeout=30)
    assert keys.status_code == 200, keys.text[:300]
    cooled = [c for k in keys.json()["items"] for c in k["cooling"]]
    assert cooled, "the 429 cooled nothing"
    for c in cooled:
        until = datetime.fromisoformat(c["until"].replace("Z", "+00:00")).timestamp()
        assert until <= midnight + 1, c
        if quota_id == MINUTE_Q:
            assert until <= now + MINUTE_CAP_S + 1, c
    headroom = httpx.get(f"{proxy.url}/admin/api/pool/headroom", headers=ADMIN, timeout=30)
    assert headroom.status_code == 200, headroom.text[:300]
    attempts = proxy.rows("SELECT retry_delay_s FROM attempts")
    for (delay,) in attempts:
        assert delay is None or 0 <= delay <= 25 * 3600


@pytest.mark.parametrize("quota_id", [MINUTE_Q, DAY_Q, None], ids=["per_minute", "per_day", "unknown"])
@pytest.mark.parametrize("delay", list(DELAYS), ids=list(DELAYS))
def test_an_absurd_retry_delay_is_capped(
    delay: str, quota_id: str | None, limited: tuple[list[bytes], str], start_proxy: Callable[..., Proxy]
) -> None:
    body, url = limited
    body[0] = rate_limit_body(quota_id, DELAYS[delay])
    proxy = start_proxy(url, max_retries=0)
    check_bounded(proxy, quota_id)


@pytest.mark.parametrize("quota_id", [MINUTE_Q, None], ids=["per_minute", "unknown"])
@pytest.mark.parametrize("message", list(MESSAGES), ids=list(MESSAGES))
def test_an_absurd_wait_in_the_message_is_capped(
    message: str, quota_id: str | None, limited: tuple[list[bytes], str], start_proxy: Callable[..., Proxy]
) -> None:
    body, url = limited
    body[0] = rate_limit_body(quota_id, None, MESSAGES[message])
    proxy = start_proxy(url, max_retries=0)
    check_bounded(proxy, quota_id)
