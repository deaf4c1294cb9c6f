"""Replicas of one cluster (real `keyrack serve` processes, real Redis, a real PostgreSQL catalog, one DuckLake):
shared events and stats, keys and config broadcast, quota reserved cluster-wide."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.cluster.conftest import Replica, database
from tests.cluster.services import throwaway_redis
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, SCENARIO, Upstream, fake_key

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
MODEL = "gemini-2.5-flash"


def call(replica: Replica, model: str = MODEL) -> httpx.Response:
    return httpx.post(
        f"{replica.url}/v1beta/models/{model}:generateContent",
        json={"contents": [{"parts": [{"text": "hello"}]}]},
        headers={"x-goog-api-key": CLIENT_TOKEN},
        timeout=30,
    )


def admin(replica: Replica, method: str, path: str, **kwargs: Any) -> Any:
    resp = httpx.request(method, f"{replica.url}/admin/api{path}", headers=ADMIN, timeout=30, **kwargs)
    assert resp.status_code == 200, resp.text
    return resp.json()


def until(check: Callable[[], Any], timeout: float = 15.0) -> float:
    """Seconds until `check()` is truthy (fails after `timeout`: generous, for a loaded CI machine; the propagation
    time itself is measured by bench/cluster.py)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def lake_rows(replica: Replica, sql: str) -> list[list[Any]]:
    return admin(replica, "POST", "/query", json={"sql": sql, "format": "json"})["rows"]


def test_replicas_share_events_stats_and_sql(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    for _ in range(3):
        assert call(r1).status_code == 200
    for _ in range(4):
        assert call(r2).status_code == 200
    by_replica = "SELECT replica, count(*) AS n FROM requests GROUP BY 1 ORDER BY 1"
    until(lambda: lake_rows(r1, by_replica) == [["r1", 3], ["r2", 4]])  # committed within the interval
    for replica in (r1, r2):  # either replica reads the whole lake
        assert lake_rows(replica, by_replica) == [["r1", 3], ["r2", 4]]
        assert admin(replica, "GET", "/stats/summary")["windows"]["1h"]["calls"] == 7
        series = admin(replica, "GET", "/stats/series?granularity=hour&group_by=model")
        assert sum(r["calls"] for r in series["rows"]) == 7

    # Per-key counters (the Keys page) are every replica's totals on each replica (re-read every 10 s).
    def served(replica: Replica) -> tuple[int, int]:
        items = admin(replica, "GET", "/keys?page_size=1000")["items"]
        return sum(k["requests"] for k in items), sum(k["successes"] for k in items)

    until(lambda: served(r1) == served(r2) == (7, 7), timeout=40)
    until(lambda: "keyrack_cluster_replicas 2.0" in httpx.get(f"{r2.url}/metrics").text)
    assert 'keyrack_replica_info{replica="r2"} 1.0' in httpx.get(f"{r2.url}/metrics").text
    ready = httpx.get(f"{r1.url}/readyz").json()["cluster"]
    assert ready["replica"] == "r1" and ready["redis"] == "ok" and ready["lake"] == "ok"
    export = admin(r1, "POST", "/export")
    assert export["rows"]["requests"] == 7 and export["rows"]["keys"] == 4
    log = r1.proc.log()
    assert "cluster_catalog=postgresql://postgres@127.0.0.1" in log and "cluster_replica=r1" in log


def test_keys_and_config_changes_apply_on_every_replica(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    victim = admin(r1, "GET", "/keys")["items"][0]["id"]

    def status(replica: Replica, kid: str) -> str | None:  # the pool as this replica sees it (no lake read)
        items = admin(replica, "GET", "/keys?page_size=1000")["items"]
        return next((k["status"] for k in items if k["id"] == kid), None)

    admin(r1, "POST", f"/keys/{victim}/disable")
    assert until(lambda: status(r2, victim) == "disabled")
    admin(r1, "POST", f"/keys/{victim}/enable")
    assert until(lambda: status(r2, victim) == "active")

    added = admin(r2, "POST", "/keys", json={"text": f"p9:{fake_key('p9-new')}", "label": "fresh"})["added_ids"]
    assert until(lambda: status(r1, added[0]) == "active")
    assert next(k for k in admin(r1, "GET", "/keys")["items"] if k["id"] == added[0])["label"] == "fresh"
    admin(r1, "DELETE", f"/keys/{added[0]}")
    assert until(lambda: status(r2, added[0]) is None)

    routing = {"aliases": {"gpt-4o-mini": MODEL}, "project_tiers": {"p1": "paid"}, "fallback_enabled": True}
    admin(r2, "PATCH", "/config", json={"max_retries": 7, "strategy": "least_used", **routing})
    assert until(lambda: admin(r1, "GET", "/config")["values"]["max_retries"] == 7)
    values = admin(r1, "GET", "/config")["values"]
    assert values["strategy"] == "least_used" and {k: values[k] for k in routing} == routing
    aliased = call(r1, "gpt-4o-mini")  # routing settings act on the other replica too
    assert aliased.status_code == 200 and aliased.headers["x-keyrack-served-model"] == MODEL
    admin(r1, "POST", "/config/reset")
    assert until(lambda: admin(r2, "GET", "/config")["values"]["max_retries"] == 3)


def test_quota_is_reserved_cluster_wide(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """A configured rpm of 3 on one project: two replicas together send exactly 3 calls upstream, none of them
    refused there, and Keyrack answers the rest with its own 429 before any attempt."""
    key = fake_key("p1-a")
    up = start_upstream({"projects": {"p1": [key]}, "limits": {MODEL: {"rpm": 3}}, "seed": 1})
    limits = {"model_limits": {MODEL: {"rpm": 3}}, "api_keys": f"p1:{key}"}
    r1, r2 = start_replica(up.url, **limits), start_replica(up.url, **limits)
    statuses = [call(r).status_code for r in (r1, r2, r1, r2, r1, r2, r1, r2)]
    assert statuses.count(200) == 3 and statuses.count(429) == 5
    stats = up.stats()
    assert stats["requests"] == 3 and not stats["rate_limited"]


def test_two_clusters_share_one_redis_under_their_own_prefixes(
    tmp_path: Path, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    """KEYRACK_REDIS_PREFIX: the same project and rpm in two clusters on one Redis database are two quotas. (A Redis
    of its own: the shared test database is flushed by other tests running at the same time.)"""
    key = fake_key("p1-a")
    up = start_upstream({"projects": {"p1": [key]}, "limits": {MODEL: {"rpm": 6}}, "seed": 1})
    limits = {"model_limits": {MODEL: {"rpm": 3}}, "api_keys": f"p1:{key}"}
    with throwaway_redis(tmp_path) as server, database() as other_catalog:
        a = start_replica(up.url, redis_url=server.url, redis_prefix="team-a", **limits)
        b = start_replica(
            up.url,
            redis_url=server.url,
            redis_prefix="team-b",
            lake_catalog=other_catalog,
            lake_data=str(tmp_path / "lake-b"),
            **limits,
        )
        statuses = {r.url: [call(r).status_code for _ in range(4)] for r in (a, b)}
        b.proc.stop(signal.SIGTERM, 20)  # before its catalog is dropped
        names = {k.decode().split(":", 1)[0] for k in redis.Redis.from_url(server.url).keys("*")}
    assert all(s == [200, 200, 200, 429] for s in statuses.values()), statuses
    assert names == {"team-a", "team-b"}
