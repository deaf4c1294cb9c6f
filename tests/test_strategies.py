"""Each strategy's observable behaviour through real servers (fake upstream with tight per-project limits)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import httpx

from tests.conftest import CLIENT_TOKEN, SCENARIO, Proxy, Upstream

MODEL = "gemini-2.5-flash"
TIGHT = {**SCENARIO, "limits": {"default": {"rpm": 2}}}  # 3 projects × 2 rpm = 6 calls a minute


def call(proxy: Proxy) -> httpx.Response:
    return httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
        json={"contents": [{"parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": CLIENT_TOKEN},
    )


def upstream_429s(upstream: Upstream) -> int:
    return upstream.stats()["by_status"].get("429", 0)


def test_quota_aware_with_known_limits_never_triggers_an_upstream_429(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(TIGHT)
    proxy = start_proxy(upstream.url, strategy="quota_aware", model_limits={MODEL: {"rpm": 2}})
    codes = [call(proxy).status_code for _ in range(9)]
    assert codes == [200] * 6 + [429] * 3
    assert upstream_429s(upstream) == 0
    assert upstream.stats()["requests"] == 6  # the refusals cost nothing upstream
    # Headroom was spread over the three projects, two calls each.
    per_project = Counter(r[0] for r in proxy.rows("SELECT project FROM requests WHERE status = 200"))
    assert per_project == {"p1": 2, "p2": 2, "p3": 2}


def test_quota_aware_learns_an_unknown_limit_from_the_first_429(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(TIGHT)
    # No configured limit and a model id unknown to the built-in table: Keyrack must learn rpm from quotaValue.
    proxy = start_proxy(upstream.url, strategy="quota_aware", model_limits={MODEL: {"rpm": None}})
    codes = [call(proxy).status_code for _ in range(12)]
    assert codes.count(200) == 6
    learned = proxy.gateway.pool.tracker.limits("p1", MODEL).rpm
    assert learned == 2
    # At most one upstream 429 per project while learning; then refusals are local.
    assert upstream_429s(upstream) <= 3


def test_round_robin_burns_upstream_calls_on_429s_under_the_same_load(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(TIGHT)
    proxy = start_proxy(upstream.url, strategy="round_robin", default_cooldown_s=1)
    codes = [call(proxy).status_code for _ in range(9)]
    assert codes.count(200) == 6
    assert upstream_429s(upstream) >= 3  # it only learns by being refused


def test_least_used_spreads_calls_evenly_over_keys(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="least_used")

    async def burst() -> list[int]:
        async with httpx.AsyncClient() as client:
            rs = await asyncio.gather(
                *[
                    client.post(
                        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
                        json={"contents": [{"parts": [{"text": "hi"}]}]},
                        headers={"x-goog-api-key": CLIENT_TOKEN},
                    )
                    for _ in range(16)
                ]
            )
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 16
    per_key = Counter(r[0] for r in proxy.rows("SELECT key_id FROM requests"))
    assert sorted(per_key.values()) == [4, 4, 4, 4]


def test_strategy_switches_live(start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="quota_aware")
    gw = proxy.gateway
    fut = asyncio.run_coroutine_threadsafe(gw.update_config({"strategy": "round_robin"}), _server_loop(proxy))
    fut.result(5)
    keys = [call(proxy).headers["x-keyrack-key-id"] for _ in range(8)]
    assert gw.pool.strategy == "round_robin" and len(set(keys)) == 4
    assert keys[:4] == keys[4:]  # strict rotation


def _server_loop(proxy: Proxy) -> asyncio.AbstractEventLoop:
    assert proxy.gateway.loop is not None
    return proxy.gateway.loop
