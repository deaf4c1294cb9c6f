"""Quota truth through real servers (issue 10): a built-in guess never refuses, a wrong table is learned at once,
and every 429 Keyrack answers states the real wait, in its header and its text alike.

The fake upstream is the oracle: it enforces its own per-test limits and knows nothing of Keyrack's quota code.
Tests that wait share one stepped clock between the fake's quota windows and the proxy's pool, so "wait 30 s"
is a step of the clock, not a sleep.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from proxy_service.quota import PACIFIC, next_pacific_midnight
from tests.conftest import CLIENT_TOKEN, SCENARIO, Proxy, Upstream, fake_key

MODEL = "gemini-2.5-flash"  # the built-in table guesses 10 rpm, 250 rpd for it
BODY = {"contents": [{"parts": [{"text": "hi"}]}]}
# Noon Pacific: far from the quota day's end, so only the minute windows matter unless a test wants the day.
NOON = datetime.datetime(2026, 1, 15, 12, 0, tzinfo=PACIFIC).timestamp()
_STATED = re.compile(r"retry in ([0-9.]+)s", re.IGNORECASE)


class SteppedClock:
    """Epoch seconds that move only when the test says so (shared by the fake upstream and the proxy's pool)."""

    def __init__(self, start: float = NOON) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def generate(proxy: Proxy, surface: str = "gemini") -> httpx.Response:
    if surface == "openai":
        return httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {CLIENT_TOKEN}"},
            timeout=30,
        )
    return httpx.post(
        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
        json=BODY,
        headers={"x-goog-api-key": CLIENT_TOKEN},
        timeout=30,
    )


def stated_wait(r: httpx.Response) -> int:
    """The wait a 429 states, after checking that every place it is stated says the same number."""
    assert r.status_code == 429, r.text
    seconds = int(r.headers["retry-after"])
    assert r.headers["retry-after-ms"] == str(seconds * 1000)
    doc: Any = r.json()
    err = (doc[0] if isinstance(doc, list) else doc)["error"]
    said = [float(x) for x in _STATED.findall(err["message"])]
    assert said, err["message"]  # the text states a wait…
    assert all(math.ceil(x - 1e-6) == seconds for x in said), (err["message"], seconds)  # …the header's
    for detail in err.get("details") or []:
        if detail.get("@type", "").endswith("RetryInfo"):
            assert math.ceil(float(detail["retryDelay"].rstrip("s")) - 1e-6) == seconds, detail
    return seconds


def own_429s(proxy: Proxy) -> int:
    return proxy.rows("SELECT count(*) FROM requests WHERE outcome = 'exhausted'")[0][0]


def upstream_429s_by_project(proxy: Proxy) -> Counter[str]:
    rows = proxy.rows("SELECT project, count(*) FROM attempts WHERE upstream_status = 429 GROUP BY project")
    return Counter({p: n for p, n in rows})


def stepped(
    start_upstream: Callable[..., Upstream],
    start_proxy: Callable[..., Proxy],
    scenario: dict[str, Any],
    **settings: Any,
) -> tuple[Upstream, Proxy, SteppedClock]:
    clock = SteppedClock()
    upstream = start_upstream(scenario, clock)
    proxy = start_proxy(upstream.url, **settings)
    proxy.gateway.pool.clock = clock
    return upstream, proxy, clock


# -- 1. a guess never refuses -------------------------------------------------------------------------------------


def test_a_cold_burst_on_an_unlimited_upstream_gets_no_keyrack_429(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    """Default settings (built-in table: 10 rpm × 3 projects = 30 a minute), an upstream without limits: 300 calls
    at c=32 are all served, none refused or delayed on the table's word."""
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url)

    async def burst() -> list[int]:
        sem = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:

            async def one() -> int:
                async with sem:
                    r = await client.post(
                        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
                        json=BODY,
                        headers={"x-goog-api-key": CLIENT_TOKEN},
                    )
                    return r.status_code

            return await asyncio.gather(*(one() for _ in range(300)))

    codes = asyncio.run(burst())
    assert Counter(codes) == {200: 300}
    assert own_429s(proxy) == 0 and upstream.stats()["requests"] == 300  # one upstream attempt per call
    # Served far past the guess: the table is dropped for the model, it no longer claims a limit.
    assert proxy.gateway.pool.tracker.sources("p1", MODEL)["rpm"] is None


# -- 4. a wrong table is learned at once --------------------------------------------------------------------------


def test_a_limit_below_the_table_costs_at_most_one_upstream_429_per_project(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    """The projects allow 4 rpm where the table says 10: one upstream 429 teaches the limit to every project."""
    upstream, proxy, clock = stepped(start_upstream, start_proxy, {**SCENARIO, "limits": {MODEL: {"rpm": 4}}})
    codes = []
    for _ in range(20):
        codes.append(generate(proxy).status_code)
        clock.now += 1
    assert codes == [200] * 12 + [429] * 8  # 3 projects × 4
    per_project = upstream_429s_by_project(proxy)
    assert sum(per_project.values()) >= 1 and all(n <= 1 for n in per_project.values()), per_project
    sent = upstream.stats()["requests"]
    assert sent == 12 + sum(per_project.values())
    for _ in range(5):  # then none: Keyrack refuses on its own, at no upstream cost
        stated_wait(generate(proxy))
    assert upstream.stats()["requests"] == sent and upstream_429s_by_project(proxy) == per_project
    assert proxy.gateway.pool.tracker.sources("p3", MODEL)["rpm"] == "learned"


def test_a_limit_above_the_table_is_served_at_the_real_capacity(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    """A paid tier (25 rpm where the table says 10): all 75 calls the projects can take are served, 8 at a time,
    without a single refusal of Keyrack's own; the 76th finds the real limit."""
    upstream, proxy, _clock = stepped(start_upstream, start_proxy, {**SCENARIO, "limits": {MODEL: {"rpm": 25}}})

    async def burst(n: int) -> list[int]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(timeout=60) as client:

            async def one() -> int:
                async with sem:
                    r = await client.post(
                        f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
                        json=BODY,
                        headers={"x-goog-api-key": CLIENT_TOKEN},
                    )
                    return r.status_code

            return await asyncio.gather(*(one() for _ in range(n)))

    assert Counter(asyncio.run(burst(75))) == {200: 75}
    assert own_429s(proxy) == 0
    assert upstream.stats()["accepted"] == {"p1": {MODEL: 25}, "p2": {MODEL: 25}, "p3": {MODEL: 25}}
    stated_wait(generate(proxy))  # capacity is really used up now


# -- 2. and 3. every 429 states the real wait ---------------------------------------------------------------------


def test_waiting_exactly_retry_after_succeeds_and_a_second_less_is_refused(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    one_key = {"projects": {"p1": [fake_key("solo")]}, "limits": {MODEL: {"rpm": 3}}}
    _upstream, proxy, clock = stepped(start_upstream, start_proxy, one_key, api_keys=f"p1:{fake_key('solo')}")
    for _ in range(3):  # calls at +0, +10, +20
        assert generate(proxy).status_code == 200
        clock.now += 10
    # +30: Google's 429 passes through (no other key): the wait is when the +0 call leaves the window, 30 s.
    first = generate(proxy)
    assert first.headers.get("x-keyrack-attempts") == "1"
    waits = [stated_wait(first)]
    assert waits == [30]
    # A limit learned from it now refuses at Keyrack; every refusal states the real wait.
    for _round in range(3):
        wait = waits[-1]
        clock.now += wait - 1  # a second early: refused again, told to wait the last second
        early = generate(proxy)
        assert stated_wait(early) == 1
        clock.now += 1  # exactly Retry-After after the refusal: served
        assert generate(proxy).status_code == 200
        clock.now += 1
        waits.append(stated_wait(generate(proxy)))
        assert waits[-1] >= 3
    # Refusals came from the pool (learned rpm 3), the windows' oldest calls at +10, +20 and +60 set the waits.
    assert waits == [30, 9, 9, 39]
    assert own_429s(proxy) == 6


def test_a_passed_through_429_states_the_pool_wait_when_it_is_later(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    """A per-day 429 carries a short retryDelay, but nothing clears before midnight Pacific: the header, the text
    and the RetryInfo of the passed-through answer all say so — on both surfaces."""
    keys = {"p1": [fake_key("day-1")], "p2": [fake_key("day-2")]}
    scenario = {"projects": keys, "limits": {MODEL: {"rpd": 1}}}
    api_keys = ",".join(f"{p}:{k[0]}" for p, k in keys.items())
    _upstream, proxy, clock = stepped(start_upstream, start_proxy, scenario, api_keys=api_keys, strategy="round_robin")
    assert generate(proxy).status_code == 200 and generate(proxy).status_code == 200  # one call per project
    clock.now += 5
    r = generate(proxy)
    midnight = next_pacific_midnight(clock.now)
    assert r.headers["x-keyrack-attempts"] == "2"  # both projects tried: Google's last 429 passes through
    assert stated_wait(r) == math.ceil(midnight - clock.now) and r.headers["x-should-retry"] == "false"
    assert "Quota exceeded for metric" in r.json()["error"]["message"]  # still Google's answer
    clock.now += 60
    own = generate(proxy, "openai")  # now Keyrack's own refusal, in the OpenAI shape
    assert stated_wait(own) == math.ceil(midnight - clock.now)
    clock.now = midnight
    assert generate(proxy).status_code == 200  # the new quota day
