"""Issue 23, class 7: one slow or dead notification receiver never delays another channel's delivery.

Real receivers on 127.0.0.1 (tests/reliability/receivers.py): one drips its answer a byte every two seconds (each
read gets something, so no per-read timeout ever fires), one reads the request and never answers, one is healthy.
Slow channels of both kinds (Keyrack's signed webhook and Apprise's json://) come first on the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, Proxy, Upstream
from tests.reliability import receivers
from tests.reliability.receivers import wait_for

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def env(start_proxy: Callable[..., Proxy], upstream: Upstream) -> Iterator[tuple[Proxy, httpx.Client]]:
    proxy = start_proxy(upstream.url, alert_interval_s=1)
    notifier = proxy.gateway.alerts.notifier
    notifier.backoff_s = 0.05
    notifier.deadline_s = 3.0  # each attempt's whole exchange; the default is longer
    with httpx.Client(base_url=proxy.url + "/admin/api", headers=AUTH, timeout=60) as http:
        yield proxy, http


def _channel(http: httpx.Client, name: str, url: str) -> str:
    r = http.post("/alerts/channels", json={"name": name, "url": url})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _history(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    r = http.get("/alerts/history", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def test_slow_and_dead_receivers_never_delay_a_healthy_channel(env: tuple[Proxy, httpx.Client]) -> None:
    proxy, http = env
    with receivers.drip() as drip, receivers.silent() as dead, receivers.healthy() as good:
        port = {"drip": drip.url.rsplit(":", 1)[1], "dead": dead.url.rsplit(":", 1)[1]}
        slow = [
            _channel(http, "drip-webhook", f"webhook+{drip.url}/hook"),
            _channel(http, "drip-json", f"json://127.0.0.1:{port['drip']}/hook"),
            _channel(http, "dead-webhook", f"webhook+{dead.url}/hook"),
            _channel(http, "dead-json", f"json://127.0.0.1:{port['dead']}/hook"),
        ]
        healthy = _channel(http, "healthy", f"webhook+{good.url}/hook")
        r = http.post(
            "/alerts/rules",
            json={
                "name": "Keys present",
                "metric": "active_keys",
                "op": ">",
                "threshold": 0,
                "window_s": 60,
                "channels": [*slow, healthy],
            },
        )
        assert r.status_code == 201, r.text
        rule_id = r.json()["id"]
        # The healthy channel's message arrives in its normal time (well under a second here); the deadline is
        # generous, yet far shorter than the slow receivers hold a shared worker.
        body = wait_for(good.json_bodies, 15, "the healthy channel's message")[0]
        assert body["rule"] == "Keys present" and body["state"] == "firing"
        wait_for(
            lambda: any(h["channel_id"] == healthy for h in _history(http, rule_id=rule_id, kind="delivered")),
            10,
            "the healthy delivery recorded",
        )

        # Each slow channel fails on its own lane: a precise reason, retried with backoff, then given up.
        def given_up() -> dict[str, list[dict[str, Any]]]:
            failed = _history(http, rule_id=rule_id, kind="failed", limit=500)
            per = {cid: [h for h in failed if h["channel_id"] == cid] for cid in slow}
            done = all(any("gave up" in h["message"] for h in hs) for hs in per.values())
            return per if done else {}

        per_channel = wait_for(given_up, 60, "every slow channel to give up")
        attempts = proxy.gateway.alerts.notifier.attempts
        for cid, rows in per_channel.items():
            retries = [h for h in rows if "will retry" in h["message"]]
            assert len(retries) == attempts - 1, (cid, rows)
            assert all("3 s" in h["message"] for h in rows), rows  # the whole-exchange deadline, named
        assert drip.connections >= attempts and dead.connections >= attempts
        assert len(good.bodies) == 1  # delivered once, never retried
