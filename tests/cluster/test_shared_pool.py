"""Pool state shared through Redis beyond the quota windows: two `ClusterPool`s (two replicas' pools, in one test
process) on the real Redis — round-robin turns, consecutive-failure counts, re-check probe slots — and what each
falls back to when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from proxy_service.cluster.pool import ClusterPool
from proxy_service.cluster.trust import Trust
from proxy_service.errors import PoolExhausted
from proxy_service.keys import KeySpec
from proxy_service.quota import ModelLimits
from tests.cluster.services import RedisServer, throwaway_redis
from tests.conftest import fake_key

MODEL = "gemini-2.5-flash"
SPECS = [KeySpec(fake_key(f"shared-{i}"), project=f"p{i}") for i in range(3)]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own (the shared test database is flushed by other tests running at the same time)."""
    with throwaway_redis(tmp_path) as server:
        yield server.url


def with_pools(url: str, test: Callable[[ClusterPool, ClusterPool], Awaitable[None]], **kwargs: Any) -> None:
    async def run() -> None:
        client = aredis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        trust = Trust(b"s" * 32, "t")  # the cluster's secret (from PostgreSQL in a replica)
        pools = [ClusterPool(redis=client, replica=name, prefix="t", trust=trust, **kwargs) for name in ("a", "b")]
        for pool in pools:
            pool.add(SPECS)
            # These tests are about what each replica falls back to: degraded at the first failed round trip
            # (test_trust.py checks that it takes a sustained failure).
            pool.degrade_after_s, pool.degrade_failures = 0.0, 1
        try:
            await test(*pools)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_round_robin_turns_are_cluster_wide(redis_url: str) -> None:
    async def pick(pool: ClusterPool) -> str:
        await pool.turn(MODEL)  # a round trip only when no turn is waiting (the first pick)
        key = pool.choose(MODEL)
        assert await pool.admit(key, MODEL)  # hands out the replica's next turn in the same round trip
        return key.id

    async def test(a: ClusterPool, b: ClusterPool) -> None:
        ids = sorted(a.keys)
        # Two replicas behind an alternating balancer: every turn is used once, so they never pick in lockstep
        # (own cursors would send each pair of calls to the same key) and the keys get equal shares.
        both = [await pick(pool) for pool in (a, b) * 6]
        assert all(x != y for x, y in itertools.pairwise(both)) and sorted(Counter(both).values()) == [4, 4, 4]
        # One replica alone: strictly in order (after the one turn it was still holding).
        alone = [ids.index(await pick(a)) for _ in range(5)][1:]
        assert all((y - x) % 3 == 1 for x, y in itertools.pairwise(alone))
        assert not a.degraded and not b.degraded

    with_pools(redis_url, test, strategy="round_robin")


def test_quota_aware_ranks_by_the_cluster_wide_usage(redis_url: str) -> None:
    async def test(a: ClusterPool, b: ClusterPool) -> None:
        by_project = {k.project: k.id for k in a.keys.values()}
        for _ in range(5):  # replica a spends p0's minute (5 of 10)
            key = a.keys[by_project["p0"]]
            assert await a.admit(key, MODEL)
            a.started(key, MODEL)
        for project in ("p0", "p1", "p2"):  # replica b made one call on each project: locally they look the same
            key = b.keys[by_project[project]]
            assert await b.admit(key, MODEL)
            b.started(key, MODEL)
        assert b.tracker.usage("p0", MODEL, time.time())["rpm_used"] == 6  # the cluster's count, shown as such
        # Its own view alone would pick p0 (least recently used among equals); the cluster's says p0 is the fullest.
        assert b.choose(MODEL).project != "p0"

    with_pools(redis_url, test, limits={MODEL: ModelLimits(rpm=10)})


def test_consecutive_failures_add_up_across_replicas_and_a_success_anywhere_clears_them(redis_url: str) -> None:
    async def test(a: ClusterPool, b: ClusterPool) -> None:
        kid = sorted(a.keys)[0]
        for _ in range(3):
            a.failed(a.keys[kid], "503 UNAVAILABLE", MODEL)
        await a.drain()
        for _ in range(2):
            b.failed(b.keys[kid], "503 UNAVAILABLE", MODEL)
        await b.drain()
        # 3 + 2 = the threshold: the replica that saw the fifth disables the key (and broadcasts it)
        assert b.keys[kid].status == "disabled" and b.keys[kid].disabled_reason == "failures"
        assert kid in b.changed and a.keys[kid].status == "active"

        other = sorted(a.keys)[1]
        for _ in range(4):
            a.failed(a.keys[other], "503 UNAVAILABLE", MODEL)
        await a.drain()
        assert await b.admit(b.keys[other], MODEL)  # the reservation brings the cluster's count along
        assert b.keys[other].consecutive_failures == 4
        b.succeeded(b.keys[other], MODEL)
        await b.drain()
        assert await a.admit(a.keys[other], MODEL)
        assert a.keys[other].consecutive_failures == 0  # cleared by b's success
        a.failed(a.keys[other], "503 UNAVAILABLE", MODEL)
        await a.drain()
        assert a.keys[other].status == "active" and a.keys[other].consecutive_failures == 1

    with_pools(redis_url, test, failure_threshold=5)


def test_one_replica_probes_a_key_per_interval(redis_url: str) -> None:
    async def test(a: ClusterPool, b: ClusterPool) -> None:
        first, second = sorted(a.keys)[:2]
        assert await a.claim_probes({first: 30}) == {first}
        assert await b.claim_probes({first: 30, second: 30}) == {second}
        assert await a.claim_probes({first: 30, second: 30}) == set()

    with_pools(redis_url, test)


def test_without_redis_each_replica_falls_back_to_its_own_state() -> None:
    async def test(a: ClusterPool, _b: ClusterPool) -> None:
        ids = sorted(a.keys)
        assert await a.claim_probes({ids[0]: 30}) == {ids[0]}  # nobody can hold the slot: probe for yourself
        picks = []
        for _ in range(3):
            await a.turn(MODEL)  # fails fast, degrades; the local cursor takes over
            picks.append(a.choose(MODEL).id)
        assert a.degraded and sorted(picks) == ids
        for _ in range(2):
            a.failed(a.keys[ids[0]], "503 UNAVAILABLE", MODEL)
        await a.drain()
        assert a.keys[ids[0]].consecutive_failures == 2 and a.keys[ids[0]].status == "disabled"

    with_pools("redis://127.0.0.1:1/0", test, strategy="round_robin", failure_threshold=2)


def with_server_pools(
    tmp_path: Path, test: Callable[[RedisServer, ClusterPool, ClusterPool], Awaitable[None]], **kwargs: Any
) -> None:
    """Two replicas' pools on a throwaway Redis the test may stop, pause (SIGSTOP: Redis keeps its state) or restart
    (empty: no persistence)."""
    with throwaway_redis(tmp_path) as server:

        async def run(a: ClusterPool, b: ClusterPool) -> None:
            for pool in (a, b):
                pool.resync_grace_s = 0.3
                pool.replicas = 2  # as the heartbeat counts them
            await test(server, a, b)

        with_pools(server.url, run, **kwargs)


async def fail(pool: ClusterPool, kid: str, times: int = 1) -> None:
    for _ in range(times):
        pool.failed(pool.keys[kid], "503 UNAVAILABLE", MODEL)
        await asyncio.sleep(0.002)  # distinct milliseconds: the merge orders failures and successes by time
    await pool.drain()


async def degrade(*pools: ClusterPool) -> None:
    for pool in pools:
        assert await pool.admit(pool.keys[sorted(pool.keys)[-1]], MODEL)  # Redis does not answer: local admission
        assert pool.degraded


def shared_failures(server: RedisServer, kid: str) -> int:
    client = redis.Redis.from_url(server.url)
    try:
        return int(client.zcard(f"t:f:{kid}"))
    finally:
        client.close()


def test_failures_and_successes_during_a_redis_outage_are_merged_back_by_time(tmp_path: Path) -> None:
    async def test(server: RedisServer, a: ClusterPool, b: ClusterPool) -> None:
        broke, healed = sorted(a.keys)[:2]
        await fail(a, broke)
        await fail(a, healed, 2)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGSTOP)  # Redis hangs (and keeps its state): both replicas degrade
        try:
            await degrade(a, b)
            # `broke`: 1 before + 2 on a + 2 on b = the threshold, though neither replica saw it locally.
            await fail(a, broke, 2)
            await fail(b, broke, 2)
            assert a.keys[broke].consecutive_failures == 3 and b.keys[broke].consecutive_failures == 2
            # `healed`: a failure on a, then a success on b, then a failure on a: one consecutive failure is left.
            await fail(a, healed)
            b.succeeded(b.keys[healed], MODEL)
            await asyncio.sleep(0.002)
            await fail(a, healed)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        for pool in (a, b):  # what the heartbeat does once Redis answers
            await pool.recover()
        await asyncio.sleep(0.4)  # the grace for later successes: none came, `broke` is benched
        await a.drain()
        await b.drain()
        assert "disabled" in (a.keys[broke].status, b.keys[broke].status)
        assert a.keys[healed].status == "active" and a.keys[healed].consecutive_failures == 1
        assert await b.admit(b.keys[healed], MODEL) and b.keys[healed].consecutive_failures == 1
        assert shared_failures(server, broke) == 5  # each failure once: a's first one was in Redis already
        assert shared_failures(server, healed) == 1  # b's success dropped every failure before it, a's included
        # Counted cluster-wide afterwards: b's next failures add to a's remaining one.
        await fail(b, healed, 4)
        assert b.keys[healed].status == "disabled" and b.keys[healed].disabled_reason == "failures"

    with_server_pools(tmp_path, test, failure_threshold=5)


def test_failures_during_an_outage_are_merged_into_a_restarted_empty_redis(tmp_path: Path) -> None:
    async def test(server: RedisServer, a: ClusterPool, b: ClusterPool) -> None:
        kid, other = sorted(a.keys)[:2]
        await fail(a, kid, 2)
        await fail(b, other, 2)
        b.succeeded(b.keys[other], MODEL)  # `other` was healed before the outage
        await b.drain()
        server.stop()
        await degrade(a, b)
        await fail(a, kid)
        await fail(b, kid)
        await fail(a, other)
        server.start()  # empty
        for pool in (b, a):
            await pool.recover()
        # The 2 failures before the outage come back with a's own record of them; b's success keeps b's own
        # failures of `other` out, a's failure after it counts.
        assert await b.admit(b.keys[kid], MODEL) and b.keys[kid].consecutive_failures == 4
        assert await b.admit(b.keys[other], MODEL) and b.keys[other].consecutive_failures == 1
        assert shared_failures(server, kid) == 4 and shared_failures(server, other) == 1
        await fail(b, kid)
        assert b.keys[kid].status == "disabled"

    with_server_pools(tmp_path, test, failure_threshold=5)


def test_a_minute_window_emptied_with_redis_is_put_back_before_anything_is_counted(tmp_path: Path) -> None:
    """Redis loses its state without an outage (FLUSHALL: a restart without persistence between two calls): the
    replicas must not hand out the minute's requests again."""

    async def test(server: RedisServer, a: ClusterPool, b: ClusterPool) -> None:
        kid = next(k for k, key in a.keys.items() if key.project == "p0")
        for pool in (a, b, a, b, a, b):  # the minute's 6 requests, 3 on each replica
            assert await pool.admit(pool.keys[kid], MODEL)
            pool.started(pool.keys[kid], MODEL)
            pool.succeeded(pool.keys[kid], MODEL, tokens=100)
        await a.drain()
        await b.drain()
        client = redis.Redis.from_url(server.url)
        window, tokens = "t:w:p0|gemini-2.5-flash", "t:t:p0|gemini-2.5-flash"
        try:
            assert client.zcard(window) == 6 and client.zcard(tokens) == 6
            client.flushall()
            # a notices at its next reservation, puts its 3 back first, and holds itself to 1/N until b (its
            # heartbeat, within a second) has put its own back too.
            assert not await a.admit(a.keys[kid], MODEL)
            assert client.zcard(window) == 3 and client.zcard(tokens) == 3
            assert not await b.admit(b.keys[kid], MODEL)
            assert client.zcard(window) == 6 and client.zcard(tokens) == 6
            await asyncio.sleep(0.4)  # the grace is over: Redis alone refuses now, the window being full again
            a.cooldowns.clear()
            assert not await a.admit(a.keys[kid], MODEL)
            assert a.cooldowns[("p0", MODEL)].reason == "minute" and client.zcard(window) == 6
        finally:
            client.close()

    with_server_pools(tmp_path, test, limits={MODEL: ModelLimits(rpm=6)})


def test_token_counts_reach_redis_in_batches_and_none_is_lost(tmp_path: Path) -> None:
    """Token counts are not sent one round trip per call: they wait for the batch, then all of them arrive (and
    the other replica's tpm view includes them)."""

    async def test(server: RedisServer, a: ClusterPool, b: ClusterPool) -> None:
        a.tokens_flush_s = 1.0  # long enough that a per-call write would have landed meanwhile
        kid = next(k for k, key in a.keys.items() if key.project == "p0")
        for _ in range(5):
            assert await a.admit(a.keys[kid], MODEL)
            a.started(a.keys[kid], MODEL)
            a.succeeded(a.keys[kid], MODEL, tokens=100)
        client = redis.Redis.from_url(server.url)
        tokens = "t:t:p0|gemini-2.5-flash"
        try:
            await asyncio.sleep(0.3)
            assert client.zcard(tokens) == 0  # still in the batch
            await a.drain()
            assert client.zcard(tokens) == 5
            assert sum(int(m.rsplit(b":", 1)[1]) for m in client.zrange(tokens, 0, -1)) == 500
            assert await b.admit(b.keys[kid], MODEL)
            assert b.tracker.usage("p0", MODEL, b.clock())["tpm_used"] == 500
        finally:
            client.close()

    with_server_pools(tmp_path, test, limits={MODEL: ModelLimits(rpm=100, tpm=10_000)})


def test_a_configured_limit_reached_on_another_replica_is_refused_as_a_limit_not_a_cooldown(redis_url: str) -> None:
    """Redis refusing an admission because a configured limit is used up cluster-wide cools the scope here, and the
    429 that follows says "configured limit" (issue 25, item 7), as the embedded pool does."""

    async def test(a: ClusterPool, b: ClusterPool) -> None:
        for key in list(a.keys.values()):  # replica a spends each project's one call of the minute
            assert await a.admit(key, MODEL)
            a.started(key, MODEL)
        for _ in range(len(SPECS) + 1):
            try:
                key = b.choose(MODEL)
            except PoolExhausted as exc:
                refusal = exc
                break
            assert not await b.admit(key, MODEL)  # b's own windows are empty: Redis refuses
        else:
            raise AssertionError("replica b was never refused")
        assert "configured limit of 1 request per minute" in refusal.message, refusal.message
        assert "cooling" not in refusal.message and refusal.cause == "configured_limit"
        assert refusal.violation is not None and "PerMinute" in refusal.violation["quotaId"]

    with_pools(redis_url, test, limits={MODEL: ModelLimits(rpm=1)})
