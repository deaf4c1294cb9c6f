"""Cluster trust (issue 23, class 12): what someone who can write to Redis — but not read PostgreSQL — can do to a
cluster of real replicas. Forged, tampered and replayed bus messages change nothing; a lease written straight into
Redis (forged, or a dead leader's value with an absurd TTL) is taken back within seconds; a Redis that is slow for a
moment does not flip degraded mode, a sustained outage does; Redis with a password, an ACL user and TLS works."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.cluster.conftest import Replica
from tests.cluster.services import RedisServer, throwaway_redis
from tests.cluster.test_faults import ROOMY, Load
from tests.cluster.test_leader import metric
from tests.cluster.test_replicas import admin, call, until
from tests.conftest import SCENARIO, Upstream
from tests.reliability.harness import free_port

pytestmark = pytest.mark.timeout(300)


def cluster_state(replica: Replica) -> dict[str, Any]:
    return httpx.get(f"{replica.url}/readyz", timeout=10).json()["cluster"]


def statuses(replica: Replica) -> dict[str, str]:
    return {k["id"]: k["status"] for k in admin(replica, "GET", "/keys?page_size=1000")["items"]}


def rejected(replica: Replica) -> float:
    text = httpx.get(f"{replica.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("keyrack_cluster_rejected"))


class BusTap:
    """Everything published on the cluster's bus, as a replica (or an attacker) subscribed to it sees it."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.messages: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.pubsub.subscribed:
            try:
                msg = self.pubsub.get_message(timeout=0.2)
            except (redis.RedisError, ValueError):
                return
            if msg is not None:
                self.messages.append(msg["data"])

    def close(self) -> None:
        self.pubsub.unsubscribe()
        self._thread.join(5)
        self.pubsub.close()
        self.client.close()


def test_forged_tampered_and_replayed_bus_messages_change_nothing(
    redis_url: str, redis_prefix: str, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    r1, r2 = start_replica(up.url), start_replica(up.url)
    ids = sorted(statuses(r2))
    attacker = redis.Redis.from_url(redis_url)
    bus = f"{redis_prefix}:bus"
    tap = BusTap(redis_url, bus)
    try:
        # A genuine message, captured: r1 disables a key, then enables it again.
        admin(r1, "POST", f"/keys/{ids[0]}/disable")
        until(lambda: statuses(r2)[ids[0]] == "disabled")
        until(lambda: any(b'"disabled"' in m for m in tap.messages))
        disable_msg = next(m for m in tap.messages if b'"disabled"' in m)
        admin(r1, "POST", f"/keys/{ids[0]}/enable")
        until(lambda: statuses(r2)[ids[0]] == "active")
        before = rejected(r2)

        everything_off = {
            "kind": "keys",
            "ids": ids,
            "status": {k: ["invalid", "forged", None, None] for k in ids},
            "from": "r1",
        }
        attacker.publish(bus, json.dumps(everything_off))  # the format replicas used to trust
        attacker.publish(bus, disable_msg)  # a replay of r1's own message, within seconds
        tampered = disable_msg.replace(b'"disabled"', b'"invalid"')
        assert tampered != disable_msg
        attacker.publish(bus, tampered)  # the MAC no longer matches
        attacker.publish(bus, b"k1.0123456789abcdef0123456789abcdef." + json.dumps(everything_off).encode())
        attacker.publish(bus, b"k1." + b"0" * (5 << 20))  # 5 MB: refused before any MAC is computed
        until(lambda: rejected(r2) >= before + 5)
        # Fake replicas in the heartbeat hash (N divides every limit in degraded mode): not counted.
        now_ms = int(time.time() * 1000)
        attacker.hset(f"{redis_prefix}:live", mapping={f"fake{i}": str(now_ms) for i in range(2000)})
        time.sleep(2.5)  # two heartbeats
        assert cluster_state(r2)["replicas"] == 2
        time.sleep(0.5)  # a message applied would have been applied by now (the bus answers within milliseconds)
        for r in (r1, r2):
            assert set(statuses(r).values()) == {"active"}, "a forged or replayed message changed a key"
            assert call(r).status_code == 200
        assert "event=cluster_forgery_ignored" in r2.proc.log()
    finally:
        tap.close()
        attacker.close()


def test_a_lease_written_straight_into_redis_is_taken_back_and_the_jobs_go_on(
    redis_url: str, redis_prefix: str, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    replicas = [start_replica(up.url, alert_interval_s=1) for _ in range(2)]
    attacker = redis.Redis.from_url(redis_url)
    lease = f"{redis_prefix}:leader"

    def leaders() -> list[Replica]:
        return [r for r in replicas if metric(r, "keyrack_cluster_leader") == 1.0]

    try:
        until(lambda: len(leaders()) == 1, timeout=30)
        # 1. A forged holder, no expiry: on today's main nobody ever leads again.
        attacker.set(lease, "evil#666")
        until(lambda: not leaders(), timeout=15)  # the leader notices at its next renewal
        healed = until(lambda: len(leaders()) == 1, timeout=30)
        assert attacker.get(lease) != b"evil#666"
        evaluated = sum(metric(r, "keyrack_alert_evaluations_total") for r in replicas)
        until(lambda: sum(metric(r, "keyrack_alert_evaluations_total") for r in replicas) >= evaluated + 2)
        # 2. A dead leader's genuine value kept alive with an absurd TTL (11 days): no renewal, so it is taken back.
        leader = leaders()[0]
        value = attacker.get(lease)
        leader.proc.proc.kill()
        leader.proc.proc.wait(10)
        attacker.set(lease, value, px=10**9)
        survivor = next(r for r in replicas if r is not leader)
        took = until(lambda: metric(survivor, "keyrack_cluster_leader") == 1.0, timeout=30)
        print(f"lease healed: forged {healed:.1f} s, a dead leader's value with an 11-day TTL {took:.1f} s")
        assert metric(survivor, "keyrack_cluster_leases_taken_back_total") >= 1
        assert "event=leader_lease_taken_back" in survivor.proc.log()
    finally:
        attacker.close()


def _sample_degraded(replica: Replica, seconds: float) -> list[str]:
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            seen.append(cluster_state(replica)["redis"])
        except httpx.HTTPError:
            seen.append("error")
        time.sleep(0.1)
    return seen


def test_a_slow_redis_does_not_flip_degraded_mode_and_a_sustained_outage_does(
    tmp_path: Path, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    with throwaway_redis(tmp_path) as server:
        r1 = start_replica(up.url, redis_url=server.url, **ROOMY)
        load = Load({"r1": r1.url}, workers=4).start()
        try:
            until(lambda: len(load.answers) >= 20)
            assert server.proc is not None
            for _ in range(2):  # Redis stalls twice for 1.5 s (a starved host, a slow fork): several timeouts each
                server.proc.send_signal(signal.SIGSTOP)
                try:
                    during = _sample_degraded(r1, 1.5)
                finally:
                    server.proc.send_signal(signal.SIGCONT)
                after = _sample_degraded(r1, 1.5)
                assert set(during + after) == {"ok"}, "one slow moment of Redis flipped the replica to degraded"
            assert "keyrack_cluster_redis_degraded 0.0" in httpx.get(f"{r1.url}/metrics").text
            # A sustained stall: degraded within a few seconds, and back once Redis has answered for a while.
            server.proc.send_signal(signal.SIGSTOP)
            try:
                until(lambda: cluster_state(r1)["redis"] == "degraded", timeout=20)
            finally:
                server.proc.send_signal(signal.SIGCONT)
            until(lambda: cluster_state(r1)["redis"] == "ok", timeout=20)
        finally:
            load.stop()
        assert {a.status for a in load.answers} == {200} and not load.errors


def _tls_files(where: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    assert shutil.which("openssl"), "openssl is needed for the TLS test"
    ca_key, ca, key, csr, cert = (where / n for n in ("ca.key", "ca.crt", "redis.key", "redis.csr", "redis.crt"))
    ext = where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run(*f"req -x509 -newkey rsa:2048 -nodes -keyout {ca_key} -out {ca} -days 2".split(), "-subj", "/CN=keyrack CA")
    run(*f"req -newkey rsa:2048 -nodes -keyout {key} -out {csr}".split(), "-subj", "/CN=127.0.0.1")
    run(*f"x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} -days 2 -extfile {ext}".split())
    return ca, cert, key


def test_redis_with_a_password_an_acl_user_and_tls(
    tmp_path: Path, start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    ca, cert, key = _tls_files(tmp_path)
    tls_port = free_port()
    server = RedisServer(free_port(), tmp_path)
    binary = shutil.which("redis-server")
    assert binary
    options = f"--port {server.port} --bind 127.0.0.1 --appendonly no --dir {tmp_path} --requirepass s3cret-pw"
    acl = ["--user", "keyrack", "on", ">acl-pw-77", "~*", "&*", "+@all"]
    tls = f"--tls-port {tls_port} --tls-cert-file {cert} --tls-key-file {key} --tls-ca-cert-file {ca}"
    args = [binary, *options.split(), "--save", "", *acl, *tls.split(), "--tls-auth-clients", "no"]
    server.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        until(lambda: _answers(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"), timeout=30)
        with pytest.raises(redis.AuthenticationError):  # the server really refuses strangers
            redis.Redis.from_url(server.url).ping()
        urls = {
            "password": f"redis://:s3cret-pw@127.0.0.1:{server.port}/0",
            "acl user": f"redis://keyrack:acl-pw-77@127.0.0.1:{server.port}/0",
            "tls": f"rediss://keyrack:acl-pw-77@127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}",
        }
        replicas = {name: start_replica(up.url, redis_url=url, **ROOMY) for name, url in urls.items()}
        for name, r in replicas.items():
            assert call(r).status_code == 200, name
            assert cluster_state(r)["redis"] == "ok", name
        until(lambda: all(cluster_state(r)["replicas"] == 3 for r in replicas.values()))
        for r in replicas.values():  # never a password in the log, /readyz or /metrics
            seen = r.proc.log() + httpx.get(f"{r.url}/readyz").text + httpx.get(f"{r.url}/metrics").text
            assert "s3cret-pw" not in seen and "acl-pw-77" not in seen
    finally:
        server.proc.kill()
        server.proc.wait(10)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def test_pool_state_written_straight_into_redis_cannot_make_replicas_refuse(tmp_path: Path) -> None:
    """Cooldowns, learned limits, failure counts, windows, cursors and probe slots forged in Redis (no tag, a wrong
    tag, absurd values, wrong types): the replicas admit, do not disable keys, do not degrade; the forgeries are
    removed and counted. What replicas write themselves still refuses as before."""
    from proxy_service.cluster.pool import ClusterPool
    from proxy_service.quota import ModelLimits, QuotaViolation
    from tests.cluster.test_shared_pool import MODEL, fail, with_pools

    async def test(a: ClusterPool, b: ClusterPool) -> None:
        client = redis.asyncio.Redis.from_url(server.url)
        by_project = {k.project: k for k in b.keys.values()}
        scope = f"{by_project['p0'].scope}|{MODEL}"
        try:
            # Forged refusals, one per scope: a cooldown without a tag, one with a wrong tag, one ending in 10^12 s,
            # a learned rpm of 0 with a wrong tag, a model-wide one without a tag.
            await client.set(f"t:cd:{scope}", str(int(time.time() * 1000) + 3_600_000))
            await client.set(f"t:cd:{by_project['p1'].scope}|{MODEL}", f"{int(time.time() * 1000) + 9000}|abcdef")
            await client.set(f"t:cd:{by_project['p2'].scope}|{MODEL}", f"{10**15}|abcdef")
            await client.hset(f"t:l:{scope}", "rpm", "0|0123456789abcdef")
            await client.hset(f"t:lm:{MODEL}", mapping={"rpm": "0", "rpd": "1|ff"})
            # Wrong types and shapes the scripts read: every script touching them used to fail (replicas degrade).
            await client.set(f"t:w:{scope}", "not a window")
            await client.zadd(f"t:t:{scope}", {"x:not-a-number": 1, "y:999999999999": time.time() * 1000})
            await client.set(f"t:rr:{MODEL}", "not a counter")
            for _ in range(2):
                for key in b.keys.values():
                    b.cooldowns.clear()
                    assert await b.admit(key, MODEL), f"a forged value refused {key.project}"
            assert not b.degraded
            # A wrong tag is found by the replica (counted); a malformed or absurd value by the script itself.
            assert b.trust.rejected["cooldown_forged"] >= 1 and b.trust.rejected["limit_forged"] >= 1
            for project in ("p0", "p1", "p2"):
                assert not await client.exists(f"t:cd:{by_project[project].scope}|{MODEL}")
            # Failure counts: a thousand forged failures, then one real one, do not disable the key.
            victim = by_project["p1"]
            await client.zadd(f"t:f:{victim.id}", {f"evil:{i}:0000": time.time() * 1000 for i in range(1000)})
            await fail(b, victim.id)
            assert b.keys[victim.id].status == "active" and b.trust.rejected["failure_forged"] >= 999
            await fail(b, victim.id, 2)  # three genuine ones reach the threshold: disabled, as before
            assert b.keys[victim.id].status == "disabled"
            # A probe slot held for 11 days by nobody: taken.
            await client.set(f"t:probe:{victim.id}", "evil", px=10**9)
            assert await b.claim_probes({victim.id: 30}) == {victim.id}
            # A genuine cooldown (a 429 on replica a) still refuses on replica b.
            target = a.keys[by_project["p0"].id]
            assert await a.admit(target, MODEL)
            a.started(target, MODEL)
            a.rate_limited(target, MODEL, QuotaViolation("minute", "q", 30.0, None, MODEL))
            await a.drain()
            b.cooldowns.clear()
            assert not await b.admit(b.keys[target.id], MODEL)
            assert b.cooldowns[(target.scope, MODEL)].reason == "cluster"
        finally:
            await client.aclose()

    with throwaway_redis(tmp_path) as server:
        with_pools(server.url, test, failure_threshold=3, limits={MODEL: ModelLimits(rpm=1000)}, strategy="round_robin")
