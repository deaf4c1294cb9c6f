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

Self-healing: the lease's value is `token|n|tag`, `n` counting the holder's renewals and `tag` its HMAC with the
cluster secret (cluster/trust.py), so a live leader's value changes at every renewal and nobody without the secret
can make one. A value that is not the cluster's (written straight into Redis: forged, an absurd TTL on it) or that
has not changed for a whole lease (a replayed old value, a holder that stopped renewing while something keeps the key
alive) is not a live leader's: once a replica has seen that for `lease_s + TICK_S` by its own clock — by then the
local lease of any replica that held it before has ended — it takes the key over (compare-and-set on the value it
judged). So what Redis alone can write stops the cluster-wide jobs for a few seconds, not for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy_service.cluster import shared
from proxy_service.cluster.trust import Trust
from proxy_service.logs import event

log = logging.getLogger("keyrack.cluster")
LEASE_S = 6.0  # a dead leader is replaced within this (plus one tick)
TICK_S = 1.0
_ERRORS = (RedisError, OSError, asyncio.TimeoutError)

# KEYS: lease. ARGV: token, value, ttl_ms → {1, value} held | {0, the current value}
CAMPAIGN = """
local cur = redis.call('GET', KEYS[1])
if not cur or string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, ARGV[2]}
end
return {0, cur}
"""
# Take over a lease judged not a live leader's, only if it still holds the value judged.
# KEYS: lease. ARGV: the value judged, value, ttl_ms → 1 taken | 0 changed meanwhile
SEIZE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# KEYS: lease. ARGV: token → 1 deleted | 0 not ours (never deletes a successor's lease)
RESIGN = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leader:
    def __init__(
        self,
        redis: Redis,
        key: str,
        replica: str,
        *,
        trust: Trust,
        lease_s: float = LEASE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.key = key
        self.replica = replica
        self.token = f"{replica}#{secrets.token_hex(4)}"
        self.trust = trust
        self.lease_s = lease_s
        self.clock = clock
        self.holder: str | None = None  # the replica id holding the lease at the last campaign (None: unknown)
        self.terms = 0  # times this replica won the lease
        self._until = 0.0  # local clock: when our lease ends at the latest
        self._renewals = 0
        self._seen: tuple[str, float] | None = None  # the last value seen held by another replica, since when
        self._suspect_since: float | None = None  # since when the lease has looked like no live leader's
        self.seized = 0  # leases taken over (forged or not renewed)
        self._campaign = redis.register_script(CAMPAIGN)
        self._seize = redis.register_script(SEIZE)
        self._resign = redis.register_script(RESIGN)

    @property
    def leading(self) -> bool:
        """Whether this replica may run the cluster-wide jobs now."""
        return self.clock() < self._until

    async def campaign(self) -> bool:
        """Take or extend the lease (one round trip); returns `leading`. Redis errors count as a lost campaign."""
        started = self.clock()
        was = self.leading
        self._renewals += 1
        n = str(self._renewals)
        value = f"{self.token}|{n}|{self.trust.tag('lease', self.token, n)}"
        px = int(self.lease_s * 1000)
        try:
            won, current = await self._campaign(keys=[self.key], args=[self.token, value, px])
            held = shared.text(current)
            if int(won) != 1 and self._abandoned(held, started):
                won = await self._seize(keys=[self.key], args=[held, value, px])
                if int(won) == 1:
                    self.seized += 1
                    event(log, "leader_lease_taken_back", logging.WARNING, replica=self.replica)
        except _ERRORS:
            self.holder = None
            return self.leading  # the current lease, if any, runs out by the local clock
        if int(won) == 1:
            self.holder = self.replica
            self._seen = self._suspect_since = None
            self._until = started + self.lease_s
            if not was:
                self.terms += 1
                event(log, "leader_elected", replica=self.replica, lease_s=self.lease_s)
        else:
            self._until = 0.0
            if was:
                event(log, "leader_lost", logging.WARNING, replica=self.replica, holder=self.holder)
        return self.leading

    def _abandoned(self, held: str, now: float) -> bool:
        """Whether the lease another holds is no live leader's, and has looked so for a whole lease and a tick."""
        body, _, tag = held.rpartition("|")
        token, _, n = body.partition("|")
        valid = bool(token and n) and hmac.compare_digest(tag, self.trust.tag("lease", token, n))
        if valid and (self._seen is None or self._seen[0] != held):
            self._seen, self._suspect_since = (held, now), None  # a renewal: a live leader
            self.holder = token.rsplit("#", 1)[0]
            return False
        if not valid:
            self.trust.reject("lease_forged")
            self.holder = None
            self._suspect_since = self._suspect_since if self._suspect_since is not None else now
        elif self._suspect_since is None:  # valid but not renewed since we first saw it
            self._suspect_since = self._seen[1] if self._seen else now
        return now - self._suspect_since >= self.lease_s + TICK_S

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
