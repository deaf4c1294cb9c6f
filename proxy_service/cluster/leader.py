"""`Leader`: one replica at a time runs the cluster-wide jobs (alert evaluation and notification, retention, lake
compaction), elected through a lease in Redis.

The lease is one key, `<prefix>:leader`, holding the winner's token (`replica#random`, so a restarted replica with
the same id is a new candidate). Every replica campaigns every `TICK_S` with one Lua call: take the key when it is
free, or extend it when it is already ours (compare-and-set, atomic). A clean shutdown deletes it only if it is still
ours (compare-and-delete), so the next replica takes over at its next tick; a dead leader's lease expires after
`LEASE_S` and the next campaign wins.

A replica counts itself leader only until its lease would end *by its own clock*, measured from before the call that
took or extended it (Redis starts its PX later, so the local end always comes first). A leader that can no longer
renew (Redis away, the process stalled) stops acting before any other replica can take the key, so two replicas
never act as leader at once. While Redis is unreachable nobody can win: the cluster-wide jobs pause (no alerts are
evaluated, retention and compaction wait) rather than run twice, and resume at the first tick after Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy_service.cluster import shared
from proxy_service.logs import event

log = logging.getLogger("keyrack.cluster")
LEASE_S = 6.0  # a dead leader is replaced within this (plus one tick)
TICK_S = 1.0
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# KEYS: lease. ARGV: token, ttl_ms → {1, token} held | {0, holder}
CAMPAIGN = """
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1]}
end
return {0, cur}
"""
# KEYS: lease. ARGV: token → 1 deleted | 0 not ours (never deletes a successor's lease)
RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leader:
    def __init__(
        self,
        redis: Redis,
        key: str,
        replica: str,
        *,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.replica = replica
        self.token = f"{replica}#{secrets.token_hex(4)}"
        self.lease_s = lease_s
        self.clock = clock
        self.holder: str | None = None  # the replica id holding the lease at the last campaign (None: unknown)
        self.terms = 0  # times this replica won the lease
        self._until = 0.0  # local clock: when our lease ends at the latest
        self._campaign = redis.register_script(CAMPAIGN)
        self._resign = redis.register_script(RESIGN)

    @property
    def leading(self) -> bool:
        """Whether this replica may run the cluster-wide jobs now."""
        return self.clock() < self._until

    async def campaign(self) -> bool:
        """Take or extend the lease (one round trip); returns `leading`. Redis errors count as a lost campaign."""
        started = self.clock()
        was = self.leading
        try:
            won, holder = await self._campaign(keys=[self.key], args=[self.token, int(self.lease_s * 1000)])
        except _ERRORS:
            self.holder = None
            return self.leading  # the current lease, if any, runs out by the local clock
        self.holder = shared.text(holder).rsplit("#", 1)[0]
        if int(won) == 1:
            self._until = started + self.lease_s
            if not was:
                self.terms += 1
                event(log, "leader_elected", replica=self.replica, lease_s=self.lease_s)
        else:
            self._until = 0.0
            if was:
                event(log, "leader_lost", logging.WARNING, replica=self.replica, holder=self.holder)
        return self.leading

    async def run(self) -> None:
        while True:
            try:
                await self.campaign()
            except Exception:  # never let the election loop die
                log.exception("leader campaign failed")
            await asyncio.sleep(TICK_S)

    async def resign(self) -> None:
        """Give the lease up now (clean shutdown): the next replica leads at its next tick, not after the lease."""
        self._until = 0.0
        with contextlib.suppress(*_ERRORS):  # else the lease expires on its own
            await self._resign(keys=[self.key], args=[self.token])

    def state(self) -> dict[str, Any]:
        return {"leader": self.leading, "leader_id": self.replica if self.leading else self.holder}
