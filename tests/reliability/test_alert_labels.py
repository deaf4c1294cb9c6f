"""Issue 23, class 6: alert and metric state never comes from what outside callers send.

Made-up model names — tokenless or with a token, random, key-shaped, 128 characters long, unicode, with a known
model's name as their prefix — create no alert series, no notification and no /metrics series; known models alert as
before. A rule's series are capped (the rest folded into one "(others)" series, said in the rule's state and in
/metrics), each channel takes a bounded number of notices a minute, and the alert history is pruned by the
retention job.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from proxy_service import app as app_module
from proxy_service.alerts.state import Machine
from proxy_service.store import utcnow
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, Proxy, Upstream, fake_key
from tests.reliability import receivers
from tests.reliability.receivers import wait_for

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
BODY = {"contents": [{"parts": [{"text": "hi"}]}]}
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
KNOWN = "gemini-2.5-flash"
HISTORY_ROWS = 100_000  # the alert history's row cap (proxy_service/alerts/history.py)


@pytest.fixture
def env(start_proxy: Callable[..., Proxy], upstream: Upstream) -> Iterator[tuple[Proxy, httpx.Client]]:
    proxy = start_proxy(upstream.url, alert_interval_s=1)
    proxy.gateway.alerts.notifier.backoff_s = 0.05
    with httpx.Client(base_url=proxy.url + "/admin/api", headers=AUTH, timeout=30) as http:
        yield proxy, http


def _rule(http: httpx.Client, **body: Any) -> str:
    r = http.post("/alerts/rules", json={"window_s": 300, "for_s": 0, "severity": "warning", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _evaluations(proxy: Proxy, n: int) -> None:
    """Wait for `n` more evaluations (each reads every call recorded before it starts)."""
    proxy.flush()
    target = proxy.gateway.alerts.evaluations + n
    wait_for(lambda: proxy.gateway.alerts.evaluations >= target, 30, f"{n} evaluations")


def _made_up() -> list[str]:
    tag = secrets.token_hex(4)
    return [
        f"gemini-9-ultra-{tag}",
        f"{KNOWN}-{tag}",  # a known model's name as prefix: inherits its limits, is still no model
        f"models/{KNOWN}-preview-{tag}",
        "g" + tag + "x" * 119,  # 128 characters, the longest a model id may be
        f"模型-{tag}",  # unicode: no model id, refused as junk
        f"gemini-{tag}-ÿ",
        fake_key(f"path-{tag}"),  # a key where the model goes
    ]


def _openai(proxy: Proxy, token: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=token, base_url=f"{proxy.url}/v1", max_retries=0)


def _genai(proxy: Proxy, token: str) -> genai.Client:
    options = genai_types.HttpOptions(base_url=proxy.url, api_version="v1beta", retry_options=None)
    return genai.Client(api_key=token, http_options=options)


def _call(client: httpx.Client, model: str, headers: dict[str, str] | None = None, **params: str) -> int:
    r = client.post(f"/v1beta/models/{model}:generateContent", json=BODY, headers=headers or {}, params=params)
    return r.status_code


def test_made_up_model_names_create_no_alert_or_metric_state(env: tuple[Proxy, httpx.Client]) -> None:
    proxy, http = env
    with receivers.healthy() as hook:
        cid = http.post("/alerts/channels", json={"name": "hook", "url": f"webhook+{hook.url}/hook"}).json()["id"]
        by_model = _rule(http, name="Calls per model", metric="calls", op=">", threshold=0, group_by="model")
        quota = _rule(
            http, name="Quota per model", metric="quota_day_usage_pct", op=">=", threshold=0, group_by="model"
        )
        failing = _rule(http, name="Success rate", metric="success_rate", op="<", threshold=0.9)
        for rid in (by_model, quota, failing):
            assert http.patch(f"/alerts/rules/{rid}", json={"channels": [cid]}).status_code == 200

        made_up = _made_up()
        tokenless = [*made_up, KNOWN]
        token_names = [m for m in _made_up() if "AIza" not in m]
        with httpx.Client(base_url=proxy.url, timeout=30) as client:
            # Tokenless, and with keys and tokens that are not this Keyrack's, in every place a token goes.
            for i, model in enumerate(tokenless * 3):
                wrong = fake_key(f"unknown-{i}")
                variant = i % 3
                if variant == 0:
                    status = _call(client, model)
                elif variant == 1:
                    status = _call(client, model, {"x-goog-api-key": wrong})
                else:
                    status = _call(client, model, key=wrong)
                assert status in (400, 401, 404), (model, status)
            _evaluations(proxy, 2)
            assert http.get("/alerts/active").json()["items"] == []  # not even the ungrouped success rate
            assert hook.bodies == []

            # Tokenless through the real SDKs, on both surfaces.
            oa, gg = _openai(proxy, "no-token-here"), _genai(proxy, fake_key("unknown-sdk"))
            for model in made_up[:3]:
                with pytest.raises(openai.AuthenticationError):
                    oa.chat.completions.create(model=model, messages=MESSAGES)
                with pytest.raises(genai_errors.ClientError):
                    gg.models.generate_content(model=model, contents="hi")
            _evaluations(proxy, 2)
            assert http.get("/alerts/active").json()["items"] == []
            assert hook.bodies == []

            # With this Keyrack's token: upstream knows none of these models.
            assert http.delete(f"/alerts/rules/{failing}").status_code == 200  # the token's own failures may alert
            for model in token_names:
                assert _call(client, model, {"x-goog-api-key": CLIENT_TOKEN}) in (400, 404), model
            oa, gg = _openai(proxy, CLIENT_TOKEN), _genai(proxy, CLIENT_TOKEN)
            for model in token_names[:3]:
                with pytest.raises(openai.APIStatusError):
                    oa.chat.completions.create(model=model, messages=MESSAGES)
                with pytest.raises(genai_errors.APIError):
                    gg.models.generate_content(model=model, contents="hi")
            _evaluations(proxy, 2)
            assert http.get("/alerts/active").json()["items"] == []
            assert hook.bodies == []

            # A known model still alerts, per model, as before.
            assert _call(client, KNOWN, {"x-goog-api-key": CLIENT_TOKEN}) == 200
            _evaluations(proxy, 2)
            firing = wait_for(
                lambda: len(hook.json_bodies()) >= 2 and hook.json_bodies(), 15, "the known model's alerts"
            )

    assert {b["rule"] for b in firing} == {"Calls per model", "Quota per model"}
    assert all(b["labels"] == {"model": KNOWN} for b in firing), firing
    active = http.get("/alerts/active").json()["items"]
    assert {(a["name"], a["labels"]["model"]) for a in active} == {
        ("Calls per model", KNOWN),
        ("Quota per model", KNOWN),
    }
    view = http.get(f"/alerts/rules/{by_model}").json()["series"]
    assert view["series"] == 1 and view["unknown"] >= 1 and view["folded"] == 0, view

    scrape = httpx.get(proxy.url + "/metrics").text
    for name in made_up + token_names:
        bare = name.removeprefix("models/")
        assert bare not in scrape, f"{bare!r} became a /metrics label"
    state_lines = [line for line in scrape.splitlines() if line.startswith("keyrack_alert_state{")]
    assert all("model=" not in line or f"model={KNOWN}" in line for line in state_lines), state_lines
    assert f'keyrack_alert_series_excluded{{reason="unknown",rule_id="{by_model}"}}' in scrape
    rows = proxy.rows("SELECT count(*) FROM alert_events WHERE labels NOT IN ('{}', ?)", [f'{{"model": "{KNOWN}"}}'])
    assert rows == [(0,)]


def test_series_per_rule_are_capped_and_notices_per_channel_too(env: tuple[Proxy, httpx.Client]) -> None:
    proxy, http = env
    engine = proxy.gateway.alerts
    engine.max_series = 2  # the pool has three projects
    engine.notifier.per_minute = 1
    with receivers.healthy() as hook:
        cid = http.post("/alerts/channels", json={"name": "hook", "url": f"webhook+{hook.url}/hook"}).json()["id"]
        rid = _rule(http, name="Keys per project", metric="active_keys", op=">", threshold=0, group_by="project")
        assert http.patch(f"/alerts/rules/{rid}", json={"channels": [cid]}).status_code == 200
        active = wait_for(lambda: len(http.get("/alerts/active").json()["items"]) >= 2, 15, "two series firing")
        _evaluations(proxy, 2)
        active = http.get("/alerts/active").json()["items"]
        projects = sorted(a["labels"]["project"] for a in active)
        assert len(active) == 2 and "(others)" in projects, active
        assert http.get(f"/alerts/rules/{rid}").json()["series"] == {"series": 2, "unknown": 0, "folded": 2, "cap": 2}
        scrape = httpx.get(proxy.url + "/metrics").text
        assert f'keyrack_alert_series_excluded{{reason="folded",rule_id="{rid}"}} 2.0' in scrape
        # One notice a minute for this channel: the second firing series is held back, counted and recorded.
        wait_for(lambda: hook.bodies, 10, "the first notice")
        held = wait_for(
            lambda: [
                h
                for h in http.get("/alerts/history", params={"kind": "failed"}).json()["items"]
                if "not sent: over this channel's cap of 1 a minute" in h["message"]
            ],
            10,
            "the held-back notice recorded",
        )
        assert held[0]["channel_id"] == cid
        assert len(hook.bodies) == 1
        assert 'keyrack_alert_deliveries_total{result="suppressed"}' in httpx.get(proxy.url + "/metrics").text


@pytest.fixture
def fast_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "RETENTION_TICK_S", 0.3)


def test_alert_history_is_pruned_by_days_and_rows(
    fast_retention: None, start_proxy: Callable[..., Proxy], upstream: Upstream
) -> None:
    proxy = start_proxy(upstream.url)  # the alert history is kept 30 days by default
    now = utcnow()
    insert = """
        INSERT INTO alert_events
        SELECT 'r' || i, ? - to_microseconds(i), 'fired', 'rule', 'r', 'info', 'firing', '{}', 1, 0, NULL, 0, ''
        FROM range(?) t(i)"""

    def seed(cur: Any) -> None:
        cur.execute(insert, [now - timedelta(days=60), 500])  # past the 30 days
        cur.execute(insert, [now, HISTORY_ROWS + 1_000])  # recent, but more than the cap

    proxy.gateway.writer.submit(seed).result(60)
    wait_for(lambda: proxy.rows("SELECT count(*) FROM alert_events")[0][0] <= HISTORY_ROWS, 30, "the history pruned")
    oldest = proxy.rows("SELECT min(ts) FROM alert_events")[0][0]
    assert oldest > now - timedelta(days=30)
    assert proxy.rows("SELECT count(*) FROM alert_events")[0][0] == HISTORY_ROWS


def test_alert_states_shared_through_redis_are_bounded(env: tuple[Proxy, httpx.Client]) -> None:
    """A replica loads the leader's states from Redis (cluster mode): whatever is written there, the states kept are
    of rules this replica has, at most the series cap per rule, each with a valid phase and one short label."""
    proxy, http = env
    rid = _rule(http, name="Per model", metric="calls", op=">", threshold=0, group_by="model", enabled=False)
    engine = proxy.gateway.alerts

    def state(labels: list[list[str]], rule_id: str = rid, phase: str = "firing") -> dict[str, Any]:
        return {"rule_id": rule_id, "labels": labels, "phase": phase, "since": 1.0, "pending_since": 1.0}

    payload = [state([["model", f"forged-{i}"]]) for i in range(5_000)]
    payload += [state([["model", "x"]], rule_id="no-such-rule"), state([["model", "y"]], phase="exploded")]
    payload += [state([["model", "z" * 10_000]]), state([["model", "a"], ["project", "b"]])]
    loop = proxy.gateway.loop
    assert loop is not None
    loop.call_soon_threadsafe(engine.load_states, json.dumps(payload))
    wait_for(lambda: rid in engine.machines, 10, "the states loaded")
    assert set(engine.machines) == {rid}
    assert len(engine.machines[rid].states) == engine.max_series
    assert httpx.get(proxy.url + "/metrics").status_code == 200
    # An entry of the wrong shape is skipped; the rest still load.
    loop.call_soon_threadsafe(engine.load_states, json.dumps([{"nonsense": 1}, state([["model", "ok"]])]))
    wait_for(lambda: len(engine.machines.get(rid, Machine(rid)).states) == 1, 10, "the second load")
