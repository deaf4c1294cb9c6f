"""Pool state shared through Redis beyond the quota windows: two `ClusterPool`s (two replicas' pools, in one test
process) on the real Redis — round-robin turns, consecutive-failure counts, re-check probe slots — and what each
falls back to when Redis cannot be reached."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis

from proxy_service.cluster.pool import ClusterPool
from proxy_service.keys import KeySpec
from proxy_service.quota import ModelLimits
from tests.cluster.services import throwaway_redis
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
        pools = [ClusterPool(redis=client, replica=name, prefix="t", **kwargs) for name in ("a", "b")]
        for pool in pools:
            pool.add(SPECS)
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
