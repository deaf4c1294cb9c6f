"""Pool state shared through Redis beyond the quota windows: two `ClusterPool`s (two replicas' pools, in one test
process) on the real Redis — round-robin turns, consecutive-failure counts, re-check probe slots — and what each
falls back to when Redis cannot be reached."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aredis

from proxy_service.cluster.pool import ClusterPool
from proxy_service.keys import KeySpec
from tests.conftest import fake_key

MODEL = "gemini-2.5-flash"
SPECS = [KeySpec(fake_key(f"shared-{i}"), project=f"p{i}") for i in range(3)]


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
    async def test(a: ClusterPool, b: ClusterPool) -> None:
        picks = []
        for pool in (a, b, b, a, b, a, a):
            await pool.turn(MODEL)
            picks.append(pool.choose(MODEL).id)
        ids = sorted(a.keys)
        assert picks == [ids[i % 3] for i in range(7)]  # one cycle over both replicas, as one process would
        assert not a.degraded and not b.degraded

    with_pools(redis_url, test, strategy="round_robin")


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
