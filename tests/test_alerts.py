"""Alerts end to end through real servers on 127.0.0.1: the proxy (fake Gemini behind it), the admin API, real
receivers — an HTTP server for the signed webhook and Apprise's json://, a local SMTP server (aiosmtpd) for
mailto://, and a receiver that fails. Evaluation runs every second (`alert_interval_s=1`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy_service.events import RequestEvent
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, SCENARIO, Proxy, Upstream
from tests.servers import serve

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Receiver:
    """An HTTP endpoint that records every POST; answers `fail_status` for the first `fail_first` of them."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0
    fail_status: int = 500
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for _h, b in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    async def hook(request: Request) -> Response:
        body = await request.body()
        with rec.lock:
            rec.received.append((dict(request.headers), body))
            n = len(rec.received)
        return Response("no", rec.fail_status) if n <= rec.fail_first else Response("ok")

    with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        rec.url = url
        yield rec


@dataclass
class Mailbox:
    port: int = 0
    messages: list[Any] = field(default_factory=list)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox()
    with socket.socket() as probe:  # aiosmtpd checks readiness by connecting to its port, so it needs a real one
        probe.bind(("127.0.0.1", 0))
        box.port = probe.getsockname()[1]
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def env(start_proxy: Callable[..., Proxy], upstream: Upstream) -> Iterator[tuple[Proxy, httpx.Client]]:
    proxy = start_proxy(upstream.url, alert_interval_s=1)
    proxy.gateway.alerts.notifier.backoff_s = 0.05  # retries within the test's time
    with httpx.Client(base_url=proxy.url + "/admin/api", headers=AUTH, timeout=30) as http:
        yield proxy, http


def _rule(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/alerts/rules", json={"window_s": 60, "for_s": 0, "severity": "warning", **body})
    assert r.status_code == 201, r.text
    return r.json()


def _channel(http: httpx.Client, url: str, **extra: Any) -> dict[str, Any]:
    r = http.post("/alerts/channels", json={"name": "test", "url": url, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def _history(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    return http.get("/alerts/history", params=params).json()["items"]


# -- rules and channels through the API ---------------------------------------------------------------------------
def test_rule_crud_defaults_and_field_named_errors(env: tuple[Proxy, httpx.Client]) -> None:
    _proxy, http = env
    rules = http.get("/alerts/rules").json()["items"]
    defaults = [r for r in rules if r["id"].startswith("default-")]
    assert len(defaults) >= 8 and not any(r["enabled"] for r in defaults)
    created = _rule(http, name="Too many invalid keys", metric="invalid_keys", op=">", threshold=2)
    assert created["enabled"] is True and created["state"] == "inactive"
    rid = created["id"]
    r = http.patch(f"/alerts/rules/{rid}", json={"threshold": 5, "enabled": False})
    assert r.status_code == 200 and r.json()["threshold"] == 5 and r.json()["enabled"] is False
    assert http.get(f"/alerts/rules/{rid}").json()["threshold"] == 5
    for body, fld in [
        ({"metric": "nope"}, "metric"),
        ({"op": "=="}, "op"),
        ({"window_s": -1}, "window_s"),
        ({"threshold": "x"}, "threshold"),
        ({"channels": ["missing"]}, "channels"),
        ({"id": "mine"}, "id"),
    ]:
        base = {"name": "x", "metric": "calls", "op": ">", "threshold": 1, "window_s": 60}
        r = http.post("/alerts/rules", json={**base, **body})
        assert r.status_code == 422 and r.json()["error"]["field"] == fld, (body, r.text)
    assert http.patch(f"/alerts/rules/{rid}", json={"op": "!"}).json()["error"]["field"] == "op"
    assert http.patch("/alerts/rules/nope", json={"op": ">"}).status_code == 404
    assert http.delete(f"/alerts/rules/{rid}").status_code == 200
    assert http.get(f"/alerts/rules/{rid}").status_code == 404
    metrics = {m["name"] for m in http.get("/alerts/metrics").json()["items"]}
    assert {
        "invalid_keys",
        "active_keys",
        "success_rate",
        "error_rate",
        "exhausted_rate",
        "upstream_429_rate",
        "p95_latency_ms",
        "calls",
    } <= metrics


FIXED_HOST_URLS = {
    "slack": ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "TIiajkdnlazkcOXrIdevi7FQ"),
    "discord": ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "JHMHI8qBe7bk2ZwO5U711o3dV_js"),
    "tgram": ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/12315544", "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"),
    "dingtalk": ("dingtalk://SECabc123def456ghi789@d6a5b1c2e3f4a5b6c7d8e9f0/", "SECabc123def456ghi789"),
    "wecombot": ("wecombot://a1b2c3d4-e5f6-a7b8-c9d0-e1f2a3b4c5d6", "a1b2c3d4-e5f6-a7b8-c9d0-e1f2a3b4c5d6"),
    "feishu": ("feishu://0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d", "0a1b2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d"),
    "mailto": ("mailto://ops:Sup3rS3cretPw@example.com?to=oncall@example.com", "Sup3rS3cretPw"),
}


def test_channel_urls_are_validated_and_masked_everywhere(env: tuple[Proxy, httpx.Client]) -> None:
    proxy, http = env
    answers = []
    for scheme, (url, secret) in FIXED_HOST_URLS.items():
        r = http.post("/alerts/channels", json={"name": scheme, "url": url})
        assert r.status_code == 201, (scheme, r.text)
        answers.append(r.text)
        assert r.json()["scheme"] == scheme and secret not in r.text
    listing = http.get("/alerts/channels")
    answers.append(listing.text)
    assert {c["scheme"] for c in listing.json()["items"]} == set(FIXED_HOST_URLS)
    for _scheme, (url, secret) in FIXED_HOST_URLS.items():
        assert all(secret not in a and url not in a for a in answers)
    for bad in ["", "not a url", "slack://", "nosuchservice://x/y", "webhook+https:///nohost", "x" * 3000]:
        r = http.post("/alerts/channels", json={"name": "bad", "url": bad})
        assert r.status_code == 422 and r.json()["error"]["field"] == "url", bad
    assert http.post("/alerts/channels", json={"url": "json://h/x", "colour": 1}).json()["error"]["field"] == "colour"
    # the URL never leaks into the database's user-visible schema either
    assert http.post("/query", json={"sql": "SELECT * FROM alert_channels"}).status_code == 400
    assert all(secret in str(proxy.gateway.alerts.secrets()) for _u, secret in FIXED_HOST_URLS.values())


# -- delivery --------------------------------------------------------------------------------------------------------
def _invalidate_keys(upstream: Upstream, proxy: Proxy) -> None:
    """Make upstream reject every pool key, and send calls until Keyrack has marked them invalid."""
    keys = [k for ks in SCENARIO["projects"].values() for k in ks]
    upstream.set_scenario({**SCENARIO, "invalid_keys": [*SCENARIO["invalid_keys"], *keys]})
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for _ in range(3):
            client.post(
                "/v1beta/models/gemini-2.5-flash:generateContent",
                headers={"x-goog-api-key": CLIENT_TOKEN},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
    assert proxy.gateway.pool.counts()["invalid"] >= 1


def test_invalid_keys_fire_deliver_signed_webhook_and_resolve(
    env: tuple[Proxy, httpx.Client], upstream: Upstream, receiver: Receiver
) -> None:
    proxy, http = env
    channel = _channel(http, f"webhook+{receiver.url}/hook")
    secret = channel["secret"]
    assert channel["kind"] == "webhook" and channel["signed"] and secret not in http.get("/alerts/channels").text
    rule = _rule(
        http,
        name="Keys rejected upstream",  # rule names are unique: the default rule is "Invalid keys"
        metric="invalid_keys",
        op=">",
        threshold=0,
        for_s=2,
        severity="critical",
        channels=[channel["id"]],
    )
    breached_at = time.time()
    _invalidate_keys(upstream, proxy)
    pending = wait_for(lambda: http.get("/alerts/active").json()["items"], what="pending")
    assert pending[0]["rule_id"] == rule["id"] and pending[0]["state"] in ("pending", "firing")
    wait_for(lambda: receiver.bodies(), what="the firing webhook")
    fired_after = time.time() - breached_at
    assert fired_after <= 2 + 1 + 3  # for_s + one interval (+ the calls that broke the keys, and delivery)
    headers, raw = receiver.received[0]
    expected = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    assert headers["x-keyrack-signature"] == expected
    body = json.loads(raw)
    assert body["rule"] == "Keys rejected upstream" and body["state"] == "firing" and body["severity"] == "critical"
    assert body["value"] >= 1 and body["threshold"] == 0 and body["labels"] == {}
    assert body["started_at"].endswith("Z") and body["dashboard_url"].endswith("/alerts")
    active = http.get("/alerts/active").json()
    assert active["firing"] == 1 and active["items"][0]["state"] == "firing"
    scrape = httpx.get(proxy.url + "/metrics").text
    assert (
        f'keyrack_alert_state{{labels="",rule="Keys rejected upstream",rule_id="{rule["id"]}",severity="critical"}} 2.0'
        in scrape
    )
    # recovery: the operator resets the keys (upstream accepts them again)
    upstream.set_scenario(SCENARIO)
    for key in list(proxy.gateway.pool.keys.values()):
        assert http.post(f"/keys/{key.id}/reset").status_code == 200
    wait_for(lambda: any(b["state"] == "resolved" for b in receiver.bodies()), what="the resolved webhook")
    assert http.get("/alerts/active").json()["items"] == []
    kinds = [h["kind"] for h in _history(http, rule_id=rule["id"])]
    assert kinds[0] in ("resolved", "delivered") and "fired" in kinds and kinds.count("delivered") == 2
    resolved = [b for b in receiver.bodies() if b["state"] == "resolved"]
    assert len(resolved) == 1


def test_apprise_json_and_mailto_channels_deliver(
    env: tuple[Proxy, httpx.Client], receiver: Receiver, mailbox: Mailbox
) -> None:
    proxy, http = env
    jid = _channel(http, f"json://127.0.0.1:{receiver.url.rsplit(':', 1)[1]}/hook")["id"]
    mid = _channel(http, f"mailto://127.0.0.1:{mailbox.port}?from=keyrack@example.com&to=oncall@example.com")["id"]
    r = http.post(f"/alerts/channels/{jid}/test")
    assert r.json()["ok"] is True, r.text
    assert http.post(f"/alerts/channels/{mid}/test").json()["ok"] is True
    assert "test" in receiver.bodies()[0]["title"].lower()
    _rule(http, name="Keys present", metric="active_keys", op=">", threshold=0, channels=[jid, mid])
    wait_for(lambda: len(receiver.bodies()) >= 2, what="the json:// message")
    fired = receiver.bodies()[1]
    assert "Keys present" in fired["title"] and "firing" in fired["message"]
    wait_for(lambda: len(mailbox.messages) >= 2, what="the e-mail")
    mail = mailbox.messages[1]
    assert "Keys present" in mail["Subject"] and "oncall@example.com" in mail["To"]
    text = mail.get_payload(decode=True) if not mail.is_multipart() else mail.get_payload(0).get_payload(decode=True)
    assert b"firing" in text and b"/alerts" in text
    wait_for(
        lambda: (
            {h["channel_id"] for h in _history(http, kind="delivered") if h["rule"] == "Keys present"} == {jid, mid}
        ),
        what="both deliveries recorded",
    )
    assert proxy.gateway.alerts.notifier.depth() == 0


def test_messages_follow_the_operator_language(env: tuple[Proxy, httpx.Client], receiver: Receiver) -> None:
    _proxy, http = env
    assert http.patch("/config", json={"language": "zh"}).status_code == 200
    cid = _channel(http, f"webhook+{receiver.url}/hook")["id"]
    _rule(http, name="密钥存在", metric="active_keys", op=">", threshold=0, channels=[cid])
    body = wait_for(lambda: receiver.bodies(), what="message")[0]
    assert "告警中" in body["title"] and "firing" in body["title"] and "密钥存在" in body["message"]


def test_a_failing_receiver_is_retried_then_recorded_and_the_proxy_keeps_serving(
    env: tuple[Proxy, httpx.Client], receiver: Receiver
) -> None:
    proxy, http = env
    receiver.fail_first = 10**6
    cid = _channel(http, f"webhook+{receiver.url}/hook")["id"]
    rule = _rule(http, name="Always", metric="active_keys", op=">", threshold=0, channels=[cid])
    attempts = proxy.gateway.alerts.notifier.attempts
    wait_for(lambda: len(receiver.received) >= attempts, what="all attempts")
    failed = wait_for(
        lambda: [h for h in _history(http, rule_id=rule["id"], kind="failed") if "gave up" in h["message"]],
        what="the final failure",
    )
    assert failed[0]["attempt"] == attempts and "HTTP 500" in failed[0]["message"]
    retries = [h for h in _history(http, rule_id=rule["id"], kind="failed") if "will retry" in h["message"]]
    assert len(retries) == attempts - 1
    with httpx.Client(base_url=proxy.url, timeout=10) as client:  # the proxy was never held up
        r = client.post(
            "/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": CLIENT_TOKEN},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert r.status_code == 200
    assert 'keyrack_alert_deliveries_total{result="failed"}' in httpx.get(proxy.url + "/metrics").text


def test_a_receiver_that_recovers_gets_the_alert(env: tuple[Proxy, httpx.Client], receiver: Receiver) -> None:
    _proxy, http = env
    receiver.fail_first = 2
    cid = _channel(http, f"webhook+{receiver.url}/hook")["id"]
    rule = _rule(http, name="Eventually", metric="active_keys", op=">", threshold=0, channels=[cid])
    delivered = wait_for(lambda: _history(http, rule_id=rule["id"], kind="delivered"), what="delivery")
    assert delivered[0]["attempt"] == 3 and len(receiver.received) == 3


def test_silences_mute_messages_but_keep_state(env: tuple[Proxy, httpx.Client], receiver: Receiver) -> None:
    _proxy, http = env
    cid = _channel(http, f"webhook+{receiver.url}/hook")["id"]
    rule = _rule(http, name="Muted", metric="active_keys", op=">", threshold=0, channels=[cid], enabled=False)
    s = http.post("/alerts/silences", json={"rule_id": rule["id"], "duration_s": 600, "comment": "maintenance"})
    assert s.status_code == 201, s.text
    assert http.post("/alerts/silences", json={"duration_s": 60}).json()["error"]["field"] == "rule_id"
    assert http.post("/alerts/silences", json={"rule_id": rule["id"], "duration_s": -1}).status_code == 422
    http.patch(f"/alerts/rules/{rule['id']}", json={"enabled": True})
    wait_for(lambda: http.get("/alerts/active").json()["firing"], what="firing")
    fired = wait_for(lambda: _history(http, rule_id=rule["id"], kind="fired"), what="fired")
    assert "silenced" in fired[0]["message"] and receiver.received == []
    assert http.get("/alerts/active").json()["items"][0]["silenced"] is True
    assert [x["id"] for x in http.get("/alerts/silences").json()["items"]] == [s.json()["id"]]
    assert http.delete(f"/alerts/silences/{s.json()['id']}").status_code == 200
    wait_for(lambda: receiver.bodies(), what="the message once the silence is gone")


def test_a_429_storm_fires_the_refusal_rule_and_it_resolves(
    env: tuple[Proxy, httpx.Client], upstream: Upstream, receiver: Receiver
) -> None:
    proxy, http = env
    cid = _channel(http, f"webhook+{receiver.url}/hook")["id"]
    # upstream's first 429s teach Keyrack the limit; from then on it refuses calls itself (exhausted)
    _rule(http, name="429 storm", metric="exhausted_rate", op=">", threshold=0.3, window_s=10, for_s=1, channels=[cid])
    _rule(
        http,
        name="upstream 429s",
        metric="upstream_429_rate",
        op=">=",
        threshold=0.2,
        window_s=10,
        for_s=1,
        channels=[cid],
    )
    upstream.set_scenario({**SCENARIO, "limits": {"default": {"rpm": 1}}})
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for _ in range(12):
            client.post(
                "/v1beta/models/gemini-2.5-flash:generateContent",
                headers={"x-goog-api-key": CLIENT_TOKEN},
                json={"contents": [{"parts": [{"text": "hi"}]}]},
            )
    firing = wait_for(lambda: len(receiver.bodies()) >= 2 and receiver.bodies(), what="the storm alerts")
    assert {b["rule"] for b in firing} == {"429 storm", "upstream 429s"}
    assert all(b["value"] >= b["threshold"] and b["state"] == "firing" for b in firing)
    for b in firing:  # ratios in percent, as the dashboard shows them, not 0.2093
        assert f"value {b['value'] * 100:.1f} % {b['op']} threshold {b['threshold'] * 100:.1f} %" in b["message"]
    # no more 429s: the 10 s window empties and the alert resolves
    wait_for(lambda: sum(b["state"] == "resolved" for b in receiver.bodies()) == 2, timeout=25, what="resolution")


def test_messages_show_values_as_the_dashboard_does() -> None:
    from proxy_service.alerts.notify import Notice, render

    def body(metric: str, value: float, threshold: float, language: str = "en") -> str:
        notice = Notice("r1", "Rule", "firing", "warning", metric, ">", threshold, value, {}, 0.0, 0.0, "fired")
        return render(notice, language, "http://127.0.0.1:8501")[1]

    assert "error_rate value 20.9 % > threshold 5.0 %" in body("error_rate", 0.2093, 0.05)
    assert "当前值 20.9 % > 阈值 5.0 %" in body("error_rate", 0.2093, 0.05, "zh")
    assert "p95_latency_ms value 1,234 ms > threshold 1,000 ms" in body("p95_latency_ms", 1234.4, 1000)
    assert "usable_capacity_pct value 7.5 % > threshold 10.0 %" in body("usable_capacity_pct", 7.5, 10)
    assert "attempts_per_call value 1.25× > threshold 2.00×" in body("attempts_per_call", 1.25, 2)
    assert "calls value 12,345 > threshold 100" in body("calls", 12345, 100)
    assert "spend_usd value $12.35 > threshold $10.00" in body("spend_usd", 12.345, 10)
    assert "invalid_keys value n/a" in body("invalid_keys", None, 0)  # type: ignore[arg-type]


def test_spend_rule_sums_the_windows_estimated_cost_per_project(tmp_path: Any) -> None:
    from proxy_service.alerts.rules import parse_rule
    from proxy_service.alerts.sources import database_values
    from proxy_service.store import Store, utcnow

    store = Store(tmp_path / "spend.duckdb")
    cur = store.cursor()
    now = utcnow()
    rows = [("p1", 0.25, 10), ("p1", 0.5, 20), ("p2", 0.0, 30), ("p1", 9.0, 7200)]  # the last: out of the window
    for i, (project, cost, age) in enumerate(rows):
        cur.execute(
            "INSERT INTO requests (ts, request_id, client_id, project, outcome, cost_usd) VALUES (?, ?, 't', ?, "
            "'success', ?)",
            [now - timedelta(seconds=age), f"r{i}", project, cost],
        )
    rule = parse_rule(
        {"name": "spend", "metric": "spend_usd", "op": ">", "threshold": 0.5, "window_s": 3600, "group_by": "project"}
    )
    values = database_values(cur, [rule], time.time())[rule.id]
    assert {labels: v for labels, v in values.items()} == {(("project", "p1"),): 0.75, (("project", "p2"),): 0.0}
    cur.close()
    store.close()


# -- backtest --------------------------------------------------------------------------------------------------------
def test_backtest_reads_seven_days_of_rollup(env: tuple[Proxy, httpx.Client]) -> None:
    proxy, http = env
    now = datetime.now(UTC).replace(tzinfo=None)
    start = (now - timedelta(days=6)).replace(minute=0, second=0, microsecond=0)
    for q in range(48 * 4):  # two days, two calls every 15 minutes; from hour 10 to 14 one of them fails
        for i in range(2):
            bad = 40 <= q < 56 and i == 0
            proxy.gateway.writer.record(
                RequestEvent(
                    ts=start + timedelta(minutes=15 * q + i),
                    request_id=f"r{q}-{i}",
                    client_id=None,
                    surface="gemini",
                    operation="generateContent",
                    model="gemini-2.5-flash",
                    stream=False,
                    status=503 if bad else 200,
                    outcome="upstream_error" if bad else "success",
                    latency_ms=100.0,
                )
            )
    proxy.gateway.writer.flush()
    rule = {"name": "bt", "metric": "success_rate", "op": "<", "threshold": 0.9, "window_s": 900, "for_s": 1800}
    r = http.post("/alerts/backtest", json=rule)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["supported"] and data["resolution_s"] == 900 and len(data["series"]) >= 48
    assert data["fired"] == 1  # one four-hour breach, firing 30 min after it began
    span = data["spans"][0]
    began = start + timedelta(hours=10)
    assert span["start"].startswith((began + timedelta(minutes=30)).isoformat()[:16])
    assert span["end"].startswith((start + timedelta(hours=14)).isoformat()[:16])
    assert http.post("/alerts/backtest", json={**rule, "filters": {"model": "other"}}).json()["fired"] == 0
    live_only = http.post("/alerts/backtest", json={**rule, "metric": "invalid_keys"}).json()
    assert live_only["supported"] is False and "history" in live_only["reason"]
    assert http.post("/alerts/backtest", json={**rule, "window_s": -1}).json()["error"]["field"] == "window_s"
