"""Client records and admission (proxy_service/clients.py): token hashes, rotation grace, limits and their waits,
priority classes under scarcity and fair share within a class — on the book with a settable clock, then through a
real proxy in front of the fake upstream (three classes driving 3× what one model serves; two clients of one class
at a 10:1 demand ratio)."""

from __future__ import annotations

import calendar
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.clients import FORECAST_MIN_S, Client, ClientBook, config_client_id, limit_forecast
from proxy_service.errors import ClientRefused
from tests.conftest import Proxy, Upstream, fake_key

NOW = float(calendar.timegm((2026, 12, 7, 21, 0, 0)))


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


def book(free: Callable[[str], float] = lambda _m: 1.0, reserve: dict[str, float] | None = None) -> ClientBook:
    reserve = reserve if reserve is not None else {"interactive": 0.0, "standard": 0.1, "batch": 0.3}
    return ClientBook(b"install-secret", free, lambda: reserve, clock=Clock())


def client(b: ClientBook, name: str, token: str | None = None, **kw: Any) -> Client:
    c = Client(id=name, label=name, token_hash=b.hash(token or f"tok-{name}"), **kw)
    b.put(c)
    return c


def refusal(b: ClientBook, c: Client, model: str | None = "m") -> ClientRefused:
    with pytest.raises(ClientRefused) as caught:
        b.admit(c, model, model)
    return caught.value


def test_tokens_are_found_by_keyed_hash_only() -> None:
    b = book()
    c = client(b, "a", token="secret-token")
    assert b.find("secret-token") is c and b.find("secret-tokeN") is None
    other = ClientBook(b"another-install", lambda _m: 1.0, dict, clock=Clock())
    assert other.hash("secret-token") != c.token_hash  # the install's key is part of the hash
    assert "secret-token" not in c.token_hash and len(c.token_hash) == 64


def test_rotation_grace_ends_on_time() -> None:
    b = book()
    c = client(b, "a", token="old")
    clock = b.clock
    assert isinstance(clock, Clock)
    rotated = Client(id="a", label="a", token_hash=b.hash("new"), old_hash=c.token_hash, old_until=NOW + 30)
    b.put(rotated)
    assert b.find("old") is rotated and b.find("new") is rotated
    clock.t = NOW + 30
    assert b.find("old") is None and b.find("new") is rotated


def test_each_limit_refuses_with_its_name_and_an_honest_wait() -> None:
    b = book()
    clock = b.clock
    assert isinstance(clock, Clock)
    c = client(b, "nightly-batch", limits={"rpm": 2})
    b.admit(c, "m")
    clock.t += 10
    b.admit(c, "m")
    err = refusal(b, c)
    assert err.status_code == 429 and err.refusal == "client_limit"
    assert "client 'nightly-batch' reached its per-minute call limit (rpm 2)" in err.message
    assert err.retry_after == 50  # the first call leaves the minute window 50 s from now
    clock.t += 50
    b.admit(c, "m")  # it did

    t = client(b, "tokens", limits={"tpd": 200000})
    b.admit(t, "m")
    b.release(t, 200000)
    err = refusal(b, t)
    assert "client 'tokens' reached its daily token limit (tpd 200000)" in err.message
    midnight = float(calendar.timegm((2026, 12, 8, 0, 0, 0)))
    assert err.retry_after == int(midnight - clock.t) + (0 if (midnight - clock.t).is_integer() else 1)

    m = client(b, "monthly", limits={"calls_per_month": 1})
    b.admit(m, None)
    err = refusal(b, m, None)
    assert "monthly call limit (calls_per_month 1)" in err.message
    assert err.retry_after is not None and err.retry_after > 86400  # the next month, not the next day

    k = client(b, "parallel", limits={"concurrency": 1})
    b.admit(k, "m")
    assert "concurrency limit (concurrency 1)" in refusal(b, k).message
    b.release(k, None)
    b.admit(k, "m")


def test_limits_of_zero_refuse_everything_and_counters_roll_with_the_utc_day() -> None:
    b = book()
    clock = b.clock
    assert isinstance(clock, Clock)
    c = client(b, "a", limits={"rpd": 1})
    b.admit(c, "m")
    assert refusal(b, c).refusal == "client_limit"
    clock.t = float(calendar.timegm((2026, 12, 8, 0, 0, 1)))
    b.admit(c, "m")  # a new UTC day
    z = client(b, "zero", limits={"rpm": 0})
    assert "(rpm 0)" in refusal(b, z).message


def test_model_allow_list() -> None:
    b = book()
    c = client(b, "flash-only", models=frozenset({"gemini-2.5-flash"}))
    b.admit(c, "gemini-2.5-flash")
    b.admit(c, None)  # listing models, files: no model to check
    err = refusal(b, c, "gemini-2.5-pro")
    assert err.status_code == 403 and err.refusal == "client_model" and err.retry_after is None


def test_reserve_refuses_lower_classes_first_and_only_when_a_higher_class_exists() -> None:
    free = {"m": 0.2}
    b = book(lambda m: free[m])
    alone = client(b, "alone", cls="batch")
    b.admit(alone, "m", "m")  # no class above has a client: nothing is kept back for nobody
    b = book(lambda m: free[m])
    batch = client(b, "b", cls="batch")
    std = client(b, "s", cls="standard")
    b.admit(std, "m", "m")  # no interactive client: standard keeps nothing back
    err = refusal(b, batch)
    assert "model 'm' has 20% of its quota left and 30% is kept for higher-priority clients" in err.message
    assert err.retry_after == 6  # a tenth of the minute window at an even pace
    inter = client(b, "i", cls="interactive")
    free["m"] = 0.05
    assert refusal(b, std).refusal == "priority"
    b.admit(inter, "m", "m")
    free["m"] = 0.0
    b.admit(batch, "m", "m")  # nothing left for anyone: the pool's own refusal says so, with its wait


def test_fair_share_within_a_class_holds_back_the_burst_not_the_trickle() -> None:
    free = {"m": 0.1}  # scarce: inside the fair-share band
    b = book(lambda m: free[m], {"standard": 0.0})
    heavy, light = client(b, "heavy", cls="standard"), client(b, "light", cls="standard")
    served: Counter[str] = Counter()
    for i in range(110):
        c = light if i % 11 == 0 else heavy
        try:
            b.admit(c, "m", "m")
            served[c.id] += 1
        except ClientRefused as exc:
            assert exc.refusal == "priority" and c is heavy and "fair share" in exc.message
    assert served["light"] == 10  # every call of the trickle
    assert served["heavy"] >= 10  # the burst still gets an equal share


def test_each_daily_and_monthly_limit_is_forecast_at_the_pace_of_its_period() -> None:
    """The admin view says when a client reaches each per-day / per-month limit at its pace so far (the Clients
    page shows the soonest): linear in the period's pace, `now` once reached, null when the period resets first."""
    b = book()
    c = client(b, "steady", limits={"rpd": 100, "tpd": 10_000, "calls_per_month": 1_000_000})
    day = int(NOW // 86400) * 86400
    b.clock.t = day + 6 * 3600  # type: ignore[attr-defined]  # 06:00 UTC
    for _ in range(50):
        b.admit(c, "m", None)
        b.release(c, 20)
    view = b.view(c)
    # 50 calls in 6 h: 100 at 12:00; 1,000 tokens in 6 h: 10,000 only after the day's end; no monthly forecast
    # before the month's end at this pace (unless the month is nearly over), none for a limit not set.
    assert view["limit_at"]["rpd"] == datetime.fromtimestamp(day + 12 * 3600, UTC).replace(tzinfo=None)
    assert view["limit_at"]["tpd"] is None
    assert view["limit_at"]["tokens_per_month"] is None
    for _ in range(50):
        b.admit(c, "m", None)
    assert b.view(c)["limit_at"]["rpd"] == datetime.fromtimestamp(b.clock.t, UTC).replace(tzinfo=None)  # type: ignore[attr-defined]
    assert limit_forecast(5, 10, now=700.0, start=0.0, end=10_000.0) == 1400.0
    assert limit_forecast(5, 10, now=60.0, start=0.0, end=10_000.0) == 60.0 + 5 * FORECAST_MIN_S / 5  # min pace window
    assert limit_forecast(0, 10, now=60.0, start=0.0, end=10_000.0) is None


def test_config_tokens_become_records_and_follow_the_config() -> None:
    b = book()
    changed = b.sync_config(["tok-1", "tok-2"], {config_client_id("tok-1"): "billing"})
    assert {c.id for c in changed} == {config_client_id("tok-1"), config_client_id("tok-2")}
    assert b.find("tok-1") is not None and b.find("tok-1").label == "billing"  # type: ignore[union-attr]
    assert b.required
    changed = b.sync_config(["tok-1"], {})
    gone = b.by_id[config_client_id("tok-2")]
    assert gone in changed and gone.revoked_at is not None
    assert b.sync_config(["tok-1"], {}) == []  # nothing changed
    assert not book().required  # no record: open mode (loopback only)
    b.sync_config([], {})
    assert not b.required  # every config token removed: open again, as the config says
    api = book()
    made = client(api, "made")
    made.revoked_at = NOW
    api.put(made)
    assert api.required  # revoking the last client made through the API does not open the proxy


def test_restore_refills_counters() -> None:
    b = book()
    c = client(b, "a", limits={"rpd": 5})
    b.restore([("a", 4, 1000, 40, 9000, [NOW - 10, NOW - 100])])
    b.admit(c, "m")
    b.release(c, None, refund=True)  # the pool refused it: not one of the client's calls
    assert c.usage.calls_day == 4 and c.usage.in_flight == 0
    b.admit(c, "m")
    assert c.usage.calls_day == 5 and c.usage.tokens_month == 9000 and list(c.usage.minute) == [NOW - 10, NOW]
    assert "daily call limit (rpd 5)" in refusal(b, c).message


# -- through a real proxy ----------------------------------------------------------------------------------------
# Virtual minutes: the fake upstream's quota windows, the pool's and the clients' all read one stepped clock, so two
# minutes of 3× overload take seconds.
MODEL = "gemini-2.5-flash"
CAPACITY = 60  # calls per minute on the one project of the pool, known to Keyrack (configured) and enforced upstream
KEYS = [fake_key("tenants-a"), fake_key("tenants-b")]


def _scarce(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy], clock: Clock, **settings: Any
) -> tuple[Proxy, Upstream]:
    upstream = start_upstream({"projects": {"p1": KEYS}, "limits": {MODEL: {"rpm": CAPACITY}}, "seed": 3}, clock)
    proxy = start_proxy(
        upstream.url, api_keys=",".join(f"p1:{k}" for k in KEYS), model_limits={MODEL: {"rpm": CAPACITY}}, **settings
    )
    proxy.gateway.pool.clock = clock
    proxy.gateway.clients.clock = clock
    return proxy, upstream


def _make(proxy: Proxy, label: str, cls: str) -> str:
    r = httpx.post(
        f"{proxy.url}/admin/api/clients",
        json={"label": label, "class": cls},
        headers={"authorization": "Bearer admin-secret-token-123"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def _drive(
    proxy: Proxy, clock: Clock, schedule: list[tuple[str, str]], step: float, measure_from: float = 0.0
) -> tuple[Counter[str], Counter[str]]:
    """One call per `step` virtual seconds; counts from virtual second `measure_from` on."""
    served: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    start = clock.t
    with httpx.Client(timeout=30) as http:
        for label, token in schedule:
            r = http.post(
                f"{proxy.url}/v1beta/models/{MODEL}:generateContent",
                headers={"x-goog-api-key": token},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
            if clock.t - start >= measure_from:
                if r.status_code == 200:
                    served[label] += 1
                else:
                    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
                    refused[label] += 1
            clock.t += step
    return served, refused


def test_three_classes_at_three_times_capacity_for_two_minutes(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    clock = Clock()
    proxy, upstream = _scarce(start_upstream, start_proxy, clock, priority_reserve={"standard": 0.3, "batch": 0.5})
    tokens = {n: _make(proxy, n, n) for n in ("interactive", "standard", "batch")}
    pattern = ["interactive"] + ["standard"] * 3 + ["batch"] * 5  # per minute 20, 60 and 100 calls: 3× capacity
    minutes = 2
    schedule = [(n, tokens[n]) for i in range(3 * CAPACITY * minutes) for n in [pattern[i % 9]]]
    served, refused = _drive(proxy, clock, schedule, 60 / (3 * CAPACITY))
    assert served["interactive"] >= 0.99 * 20 * minutes  # the interactive client is served
    assert refused["batch"] > refused["standard"] > refused["interactive"]  # batch absorbs the refusals first
    assert sum(served.values()) <= CAPACITY * (minutes + 1)
    assert not upstream.stats()["rate_limited"]  # no upstream 429 at all: Keyrack knew the limit
    rows = dict(proxy.rows("SELECT refusal, count(*) FROM requests WHERE refusal IS NOT NULL GROUP BY refusal"))
    assert rows.get("priority", 0) >= refused["batch"] // 2  # refused as a matter of priority, said so


def test_two_clients_of_one_class_at_ten_to_one_each_get_their_fair_share(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    clock = Clock()
    proxy, _ = _scarce(start_upstream, start_proxy, clock)
    heavy, light = _make(proxy, "heavy", "standard"), _make(proxy, "light", "standard")
    minutes = 3
    schedule = [("light", light) if i % 11 == 0 else ("heavy", heavy) for i in range(3 * CAPACITY * minutes)]
    # From the first call: the burst fills most of the first minute's window at once, and the trickle still finds
    # a slot for each call until that window frees (the band grows with what its pace needs until then).
    served, refused = _drive(proxy, clock, schedule, 60 / (3 * CAPACITY))
    light_demand = served["light"] + refused["light"]
    assert served["light"] == light_demand  # the trickle: every call (under half of the minute)
    assert served["heavy"] >= CAPACITY * minutes / 2  # the burst: at least an equal share
    assert sum(served.values()) >= 0.85 * CAPACITY * minutes  # little of the quota goes unused


def test_usage_rows_count_this_month_today_and_the_last_minute_of_admitted_calls(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from proxy_service.clients import usage_rows
    from proxy_service.store import Store

    store = Store(tmp_path / "k.duckdb")
    cur = store.cursor()

    def at(epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)

    rows = [
        (at(NOW - 10), "a", 100, "success", None),  # the last minute
        (at(NOW - 3600), "a", 50, "success", None),  # today
        (at(NOW - 5 * 86400), "a", 7, "success", None),  # this month
        (at(NOW - 40 * 86400), "a", 1000, "success", None),  # last month: not counted
        (at(NOW - 20), "a", None, "refused", "client_limit"),  # refused: not admitted
        (at(NOW - 20), "a", None, "exhausted", "pool"),  # the pool refused it: given back
        (at(NOW - 30), "b", 5, "success", None),
    ]
    for ts, cid, tokens, outcome, refusal in rows:
        cur.execute(
            "INSERT INTO requests (ts, request_id, client_id, total_tokens, outcome, refusal) VALUES (?, ?, ?, ?, ?, ?)",
            [ts, "r", cid, tokens, outcome, refusal],
        )
    got = {r[0]: r for r in usage_rows(cur, NOW)}
    cur.close()
    store.close()
    assert got["a"][1:5] == (2, 150, 3, 157)
    assert [round(t) for t in got["a"][5]] == [round(NOW - 10)]
    assert got["b"][1:5] == (1, 5, 1, 5)


def test_peers_usage_counts_against_every_limit() -> None:
    b = book()
    c = client(b, "shared", limits={"rpd": 3, "tokens_per_month": 1000, "rpm": 4, "concurrency": 3})
    b.admit(c, "m")
    b.release(c, 10)
    day, month, own = b.own_usage()
    assert (day, month) == ("20261207", "202612") and own == {"shared": (1, 10, 1, 10, 1, 0)}
    b.set_peers(day, {"shared": (2, 0, 2, 990, 0, 0)})  # the other replicas' share
    err = refusal(b, c)
    assert "daily call limit (rpd 3)" in err.message
    assert b.view(c)["usage"]["rpd"] == {"used": 3, "limit": 3}
    b.set_peers("20261206", {"shared": (0, 0, 0, 0, 0, 0)})  # a stale day's exchange is ignored
    assert b.view(c)["usage"]["rpd"]["used"] == 3
    b.set_peers(day, {"shared": (0, 0, 0, 0, 3, 0)})  # their last minute: 3 + this replica's 1 = rpm 4
    assert "rpm 4" in refusal(b, c).message
    b.set_peers(day, {"shared": (0, 0, 0, 0, 0, 3)})  # their calls in flight
    assert "concurrency 3" in refusal(b, c).message
    b.set_peers(day, {})
    b.admit(c, "m")


def test_a_message_from_another_replica_stops_a_client_or_a_token_at_once() -> None:
    b = book()
    a = client(b, "a", token="tok-a")
    client(b, "b", token="tok-b")
    b.stop(["a"], [b.hash("tok-b")])
    assert a.revoked_at is not None and b.find("tok-a") is a  # found, and refused as revoked by authenticate
    assert b.find("tok-b") is None  # a token a rotation without grace replaced elsewhere


def test_alert_metric_of_the_most_used_client_limit() -> None:
    from proxy_service.alerts.rules import RuleError, parse_rule
    from proxy_service.alerts.sources import FlapCounter, live_values
    from proxy_service.pool import Pool

    b = book()
    nightly = client(b, "nightly", limits={"tpd": 1000, "rpm": 100})
    client(b, "free")  # no limit: never near one
    b.admit(nightly, "m")
    b.release(nightly, 850)

    def rule(filters: dict[str, str]) -> Any:
        body = {"name": "client near its limit", "metric": "client_limit_use_pct", "op": ">", "threshold": 80}
        return parse_rule({**body, "window_s": 60, "filters": filters})

    pool = Pool("quota_aware", default_cooldown_s=60, failure_threshold=5, limits={})
    every, one, gone = rule({}), rule({"client": "nightly"}), rule({"client": "c_nobody"})
    values = live_values(pool, [every, one, gone], {}, FlapCounter(), NOW, clients=b)
    assert values[every.id] == {(): 85.0} and values[one.id] == {(): 85.0}
    assert values[gone.id] == {(): None}  # no such client: no data, never a breach
    with pytest.raises(RuleError):
        rule({"model": "gemini-2.5-flash"})


def test_a_live_session_is_admitted_by_the_clients_policy(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    """A Live session is one call: a model outside the client's allow-list closes it with 1008 and the reason, no
    key spent, the refusal recorded."""
    import asyncio
    import json

    import websockets

    from tests.conftest import SCENARIO
    from tests.test_live import LIVE_PATH
    from tests.test_live import MODEL as LIVE_MODEL

    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url)
    token = _make_with(proxy, {"label": "text-only", "models": ["gemini-2.5-flash"]})

    async def session() -> tuple[int, str]:
        url = proxy.url.replace("http://", "ws://") + LIVE_PATH
        async with websockets.connect(url, additional_headers={"x-goog-api-key": token}) as ws:
            await ws.send(json.dumps({"setup": {"model": f"models/{LIVE_MODEL}"}}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason

    code, reason = asyncio.run(session())
    assert code == 1008 and f"may not use model '{LIVE_MODEL}'" in reason
    deadline = time.monotonic() + 30
    sql = "SELECT refusal, outcome, client_label FROM requests WHERE operation = 'BidiGenerateContent'"
    while not (rows := proxy.rows(sql)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rows == [("client_model", "refused", "text-only")]
    assert upstream.stats()["by_operation"].get("BidiGenerateContent") is None  # no key was spent


def _make_with(proxy: Proxy, body: dict[str, Any]) -> str:
    r = httpx.post(
        f"{proxy.url}/admin/api/clients", json=body, headers={"authorization": "Bearer admin-secret-token-123"}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["token"])
