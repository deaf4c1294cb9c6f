"""One leader for the cluster-wide jobs (alerts, retention, compaction), elected through a Redis lease: real
replicas, a real webhook receiver on 127.0.0.1, and the lease itself against a real Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aredis

from proxy_service.cluster.leader import Leader
from proxy_service.cluster.trust import Trust
from tests import test_alerts
from tests.cluster.conftest import Replica
from tests.cluster.services import throwaway_redis
from tests.cluster.test_replicas import ADMIN, admin, until
from tests.conftest import SCENARIO, Upstream
from tests.test_alerts import Receiver

receiver = test_alerts.receiver  # the real webhook receiver fixture (an HTTP server on 127.0.0.1)


def metric(replica: Replica, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx.get(f"{replica.url}/metrics", timeout=10).text, re.M)
    return float(found.group(1)) if found else 0.0


def create(replica: Replica, path: str, body: dict[str, Any]) -> Any:
    resp = httpx.post(f"{replica.url}/admin/api{path}", headers=ADMIN, json=body, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def leader_of(replicas: list[Replica]) -> list[str]:
    """The leader each replica names in /readyz."""
    return [httpx.get(f"{r.url}/readyz", timeout=10).json()["cluster"]["leader"] for r in replicas]


def test_one_notification_per_firing_and_a_dead_leader_is_replaced(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica], receiver: Receiver
) -> None:
    up = start_upstream(SCENARIO)
    replicas = [start_replica(up.url, alert_interval_s=1) for _ in range(3)]

    def leaders() -> set[int]:  # the replicas that say they lead (a loaded machine may see a handover any time)
        return {i for i, r in enumerate(replicas) if metric(r, "keyrack_cluster_leader") == 1.0}

    def evaluations() -> list[float]:
        return [metric(r, "keyrack_alert_evaluations_total") for r in replicas]

    until(lambda: len(set(leader_of(replicas))) == 1 and None not in leader_of(replicas), timeout=30)
    assert len(leaders()) <= 1
    # Channel and rule created on two different replicas: whichever leads learns them over the bus and notifies.
    channel = create(replicas[0], "/alerts/channels", {"name": "hook", "url": f"webhook+{receiver.url}/hook"})

    def known() -> bool:  # the channel reached the other replica over the bus
        return channel["id"] in [c["id"] for c in admin(replicas[1], "GET", "/alerts/channels")["items"]]

    until(known)
    rule = create(
        replicas[1],
        "/alerts/rules",
        {
            "name": "Keys present",
            "metric": "active_keys",
            "op": ">",
            "threshold": 0,
            "window_s": 60,
            "for_s": 0,
            "channels": [channel["id"]],
        },
    )

    def firing() -> list[dict[str, Any]]:
        return [b for b in receiver.bodies() if b["state"] == "firing" and b["rule"] == "Keys present"]

    until(firing, timeout=30)
    # Every replica shows the alert (the leader shares its states); over a few more evaluations only the replica(s)
    # leading at the start or end of the window evaluated.
    for r in replicas:
        until(lambda r=r: [a["rule_id"] for a in admin(r, "GET", "/alerts/active")["items"]] == [rule["id"]])
    before, led = evaluations(), leaders()
    until(lambda: sum(evaluations()) >= sum(before) + 3)
    led |= leaders()
    grew = {i for i, (a, b) in enumerate(zip(before, evaluations(), strict=True)) if b > a}
    assert grew and grew <= led, "only the leader evaluates"
    assert len(firing()) == 1

    # The leader dies without resigning: another replica takes the lease once it expires, and carries on from the
    # shared states (no second "fired" message).
    until(lambda: len(leaders()) == 1)
    leader = replicas[leaders().pop()]
    others = [r for r in replicas if r is not leader]
    leader.proc.proc.kill()
    killed = time.monotonic()
    leader.proc.proc.wait(10)
    until(lambda: any(metric(r, "keyrack_cluster_leader") == 1.0 for r in others), timeout=30)
    print(f"leader handover after SIGKILL: {time.monotonic() - killed:.1f} s (lease 6 s, campaign every 1 s)")
    seen = sum(metric(r, "keyrack_alert_evaluations_total") for r in others)
    until(lambda: sum(metric(r, "keyrack_alert_evaluations_total") for r in others) >= seen + 3)
    assert len(firing()) == 1, "a handover must not notify the same firing again"

    # It resolves once, from the new leader.
    admin(others[0], "PATCH", f"/alerts/rules/{rule['id']}", json={"threshold": 1000})
    until(lambda: [b for b in receiver.bodies() if b["state"] == "resolved"], timeout=30)
    seen = sum(metric(r, "keyrack_alert_evaluations_total") for r in others)
    until(lambda: sum(metric(r, "keyrack_alert_evaluations_total") for r in others) >= seen + 2)
    assert [b["state"] for b in receiver.bodies()] == ["firing", "resolved"]


def test_the_lease_is_exclusive_renewed_and_released(tmp_path: Path) -> None:
    async def scenario(redis_url: str) -> None:
        client = aredis.Redis.from_url(redis_url)
        clock = [0.0]
        trust = Trust(b"s" * 32, "keyrack")  # the cluster's secret (from PostgreSQL in a replica)
        a = Leader(client, "keyrack:leader", "a", trust=trust, lease_s=30, clock=lambda: clock[0])
        b = Leader(client, "keyrack:leader", "b", trust=trust, lease_s=30, clock=lambda: clock[0])
        try:
            assert await a.campaign() and not await b.campaign()
            assert b.holder == "a" and b.state() == {"leader": False, "leader_id": "a"}
            assert await a.campaign()  # renewed, still the one leader
            assert await client.pttl("keyrack:leader") > 25_000
            clock[0] = 31.0  # a's renewals failed for a whole lease (by its own clock): it stops acting at once
            assert not a.leading
            await b.resign()  # never deletes a lease it does not hold
            assert await client.get("keyrack:leader") is not None
            await a.resign()
            assert await b.campaign() and b.terms == 1 and not await a.campaign()
        finally:
            await client.aclose()

    with throwaway_redis(tmp_path) as server:  # its own: the shared test database is flushed by concurrent tests
        asyncio.run(scenario(server.url))


def test_a_rule_name_taken_on_another_replica_is_refused_before_its_broadcast_arrives(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica], redis_url: str
) -> None:
    import secrets

    import redis

    up = start_upstream(SCENARIO)
    first = start_replica(up.url)
    # The same catalog on a Redis prefix of its own: another bus, so no broadcast reaches it (a lost message).
    prefix = f"deaf{secrets.token_hex(4)}"
    try:
        deaf = start_replica(up.url, redis_prefix=prefix)
        rule = {"name": "Error storm", "metric": "error_rate", "op": ">", "threshold": 0.5, "window_s": 60}
        taken = create(first, "/alerts/rules", rule)
        answer = httpx.post(
            f"{deaf.url}/admin/api/alerts/rules", json={**rule, "name": " error STORM"}, headers=ADMIN, timeout=30
        )
        assert answer.status_code == 409, answer.text
        assert f"another rule is already named 'Error storm' (id {taken['id']})" in answer.text
        other = create(deaf, "/alerts/rules", {**rule, "name": "Other"})
        renamed = httpx.patch(
            f"{deaf.url}/admin/api/alerts/rules/{other['id']}", json={"name": "Error storm"}, headers=ADMIN, timeout=30
        )
        assert renamed.status_code == 409, renamed.text
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()
