"""`ClusterPool`: the in-memory pool plus one cluster-wide admission per upstream attempt, through Redis.

The embedded `Pool` keeps its code and speed; this subclass adds:
- `admit(key, model)` (awaited by the relay before each attempt): the Lua `reserve` counts the call in the shared
  window or refuses it (cooldown, or a known limit reached on any replica). A refusal becomes a local cooldown of
  the scope until the wait Redis computed, so the next `choose()` moves on to another scope without a round trip;
- the outcome methods settle the reservation in Redis in the background (never awaited on the request path): a 429
  un-counts it, cools the scope for every replica and records the learned limit (from the observed cluster-wide
  usage when the 429 gives no value); a 5xx / connection failure un-counts it; answer tokens feed the tpm window;
- status changes (enable, disable, invalid, re-check...) are remembered for the broadcast to the other replicas;
- consecutive failures are counted in Redis (`f:{key id}`, one timed member per failure): every replica's
  transient failures of a key add up, past the threshold the replica that saw the last one disables the key (and
  broadcasts it), a success anywhere clears the count. `reserve` answers the current count, so the local copy is at
  most one call old;
- round_robin: turns come from one cluster-wide cursor. Each `reserve` also hands out the next turn, which this
  replica's next pick uses (`turn()` asks for one with an INCR only when none is waiting: the first pick, or more
  picks in flight than turns); `choose()` applies it to the candidates in one order every replica agrees on (by key
  id). Every turn is used once, so N replicas spread calls over the keys as one process would (any key at most N
  picks ahead of another, never two replicas in lockstep on one key), with still one round trip per pick.

Redis emptied (restarted without persistence, flushed): `reserve` finds this replica's marker `sync:{replica}`
gone and answers so instead of counting; the replica then puts its own state back (`resync`: its reservations and
token entries of the last minute, which it keeps for this, under their own member names, and its key failures)
before reserving again, and so does the heartbeat within a second. Every replica restores its own share, so after
one heartbeat the minute windows are what they were; until then (and for `RESYNC_GRACE_S` in all) the replica also
applies the degraded rule (1/N of each known limit), so the others' shares still missing cannot be spent twice.

Redis unreachable (degraded mode): `admit` never waits longer than the socket timeouts (0.5 s, then not at all
until the heartbeat sees Redis again). While degraded, each replica admits by its local windows at 1/N of every
known (hard) limit, N = the replicas alive at the last heartbeat — together they cannot exceed the limit; guessed
limits stay advisory as in the embedded pool. When Redis is back (`recover`, from the heartbeat) the calls admitted
meanwhile are added to the shared windows, and the key failures and successes seen meanwhile are merged by time:
each replica sends its failures since its own last success of the key (timed, named: the ones already in Redis are
not added again, so nothing is counted twice even when Redis kept its state) and the time of that success (which
drops every replica's failures before it) — the merged count is what one replica seeing every call would have
counted, in whatever order the replicas come back. A key whose merged count reaches the threshold is disabled
once the other replicas have had time to merge their successes too (`RESYNC_GRACE_S`). Round-robin turns are not
merged: the shared cursor simply resumes (any N consecutive turns still visit each of N keys once; advancing it by
the turns used meanwhile would change which key comes next, not how evenly they are spread).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from proxy_service.cluster import shared
from proxy_service.cluster.trust import Trust
from proxy_service.keys import KeySpec
from proxy_service.logs import event
from proxy_service.pool import Cooldown, Key, Pool
from proxy_service.quota import QuotaViolation, cooldown_until, next_pacific_midnight, pacific_day

log = logging.getLogger("keyrack.cluster")
_DIM = {"minute": "rpm", "day": "rpd", "tokens": "tpm"}
_REASON = {"rpm": "minute", "rpd": "day", "tpm": "tokens", "cooldown": "cluster"}
_MEMBERS_PER_KEY = 64  # reservations awaiting an outcome per (key, model); older ones are settled as used
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
RESYNC_GRACE_S = 2.5  # every replica's heartbeat (1 s) has merged its outage by then
FAILURES_TTL_MS = 7 * 86_400_000
FAILURES_KEPT = 1000  # members per key the FAILURES script keeps
MARKER_TTL_MS = 86_400_000  # `sync:{replica}`, renewed by every heartbeat
TOKENS_FLUSH_S = 0.05  # token counts are sent to Redis in batches (see _queue_tokens)
# Degraded mode needs a sustained failure: round trips failing for DEGRADE_AFTER_S, at least DEGRADE_FAILURES of them
# in a row (one slow round trip on a starved host is not an outage); it ends after RECOVER_HEARTBEATS heartbeats in a
# row reached Redis. Meanwhile a call whose reservation failed is admitted by the degraded rule, and reconciled.
DEGRADE_AFTER_S = 3.0
DEGRADE_FAILURES = 3
RECOVER_HEARTBEATS = 2
_OWN_FAILURES = 100  # this replica's failures kept per key (since its last success of the key) for a merge


class ClusterPool(Pool):
    clustered = True

    def __init__(self, *args: Any, redis: Redis, replica: str, prefix: str, trust: Trust, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redis = redis
        self.trust = trust
        self.replica = replica
        self.prefix = prefix
        self.replicas = 1  # alive at the last heartbeat (the divisor of the degraded mode)
        self.degraded = False
        self.degraded_since: float | None = None  # when the failures that led to it began (wall clock)
        self.degrade_after_s, self.degrade_failures = DEGRADE_AFTER_S, DEGRADE_FAILURES
        self.recover_heartbeats = RECOVER_HEARTBEATS
        self._failing_since: float | None = None  # monotonic: the first failed round trip of the current run
        self._failed_trips = 0
        self._heard = 0  # heartbeats in a row that reached Redis while degraded
        self.failed_trips = 0  # round trips that failed (metrics: a slow Redis shows here before it degrades)
        self.changed: set[str] = set()  # key ids whose status changed here: broadcast after they are persisted
        self.persisted: dict[str, tuple[int, int, int]] = {}  # counters already in PostgreSQL (deltas go out)
        self.admitted_local = 0  # admissions decided locally while degraded (metrics)
        self._seq = itertools.count()
        self._members: dict[tuple[str, str], list[str]] = {}
        self._offline: dict[str, tuple[str, str, int]] = {}  # member → (scope, model, ms) admitted while degraded
        # This replica's admissions (and token entries) of the last minute under a hard limit, as in Redis: put back
        # under the same member names when Redis lost them (a ZADD of a member already there changes nothing).
        self._recent: dict[str, tuple[int, str, str]] = {}  # member → (ms, scope, model), oldest first
        self._recent_tokens: deque[tuple[int, str, str, str]] = deque()  # (ms, scope, model, member:tokens)
        self.marker = f"{prefix}:sync:{replica}"
        self._synced = False  # this replica's marker was set: its absence now means Redis lost its state
        self._resyncs = 0
        self._resync_lock = asyncio.Lock()
        self._cautious_until = 0.0  # until then the degraded rule gates too (other replicas may not have resynced)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.resync_grace_s = RESYNC_GRACE_S
        # Per key: this replica's failures (ms, member) since its own last success or reset, and the time of that.
        self._own_fails: dict[str, list[tuple[int, str]]] = {}
        self._own_ok: dict[str, int] = {}
        self._token_batch: list[tuple[str, int, str, int]] = []  # (window, ms, member, tokens) not yet in Redis
        self.tokens_flush_s = TOKENS_FLUSH_S
        self._turns: dict[str, deque[int]] = {}  # model → round-robin turns handed out by Redis, not used yet
        self._reserve = redis.register_script(shared.RESERVE)
        self._release = redis.register_script(shared.RELEASE)
        self._reconcile = redis.register_script(shared.RECONCILE)
        self._limited = redis.register_script(shared.RATE_LIMITED)
        self._tokens = redis.register_script(shared.TOKENS)
        self._failures = redis.register_script(shared.FAILURES)
        self._learn_limit = redis.register_script(shared.LEARN)
        self._forget_state = redis.register_script(shared.FORGET)
        self._repair = redis.register_script(shared.REPAIR)
        self._probe = redis.register_script(shared.PROBE)

    # -- round robin (awaited by the relay before choose(), with that strategy only) -------------------------------
    async def turn(self, model: str) -> None:
        if self.degraded or self._turns.get(model):
            return
        cursor = f"{self.prefix}:rr:{model.removeprefix('models/')}"
        try:
            n = int(await self.redis.incr(cursor)) - 1
        except ResponseError:  # not a counter (not written by a replica): start it over
            self.trust.reject("cursor_malformed")
            with contextlib.suppress(*REDIS_ERRORS):
                await self.redis.delete(cursor)
            return
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return
        self._turns.setdefault(model, deque()).append(n)

    def _round_robin(self, candidates: list[Key], model: str) -> Key:
        turns = self._turns.get(model)
        if not turns:  # degraded: this replica's own turns
            return super()._round_robin(candidates, model)
        return sorted(candidates, key=lambda k: k.id)[turns.popleft() % len(candidates)]

    # -- admission (awaited by the relay) -------------------------------------------------------------------------
    async def admit(self, key: Key, model: str) -> bool:
        now = self.clock()
        member = f"{self.replica}:{next(self._seq)}"
        if self.degraded:
            return self._admit_local(key, model, now, member)
        hard = self._hard(key.scope, model)
        if hard and now < self._cautious_until and not self._room(key, model, now, hard, self._cautious_until - now):
            return False
        args: list[Any] = [int(now * 1000), member, *(_n(hard.get(d)) for d in ("rpm", "rpd", "tpm"))]
        to_midnight = next_pacific_midnight(now) - now
        args += [int(to_midnight * 1000), int(bool(hard))]
        keys = shared.scope_keys(
            self.prefix, key.scope, model.removeprefix("models/"), pacific_day(now).isoformat(), key.id
        )
        keys.append(self.marker)
        turn = int(self.strategy == "round_robin")
        longest = int((max(to_midnight, self.default_cooldown_s) + 60) * 1000)  # no genuine cooldown is longer
        try:
            seen = self._resyncs
            try:
                res = await self._reserve(keys=keys, args=[*args, turn, int(self._synced), longest])
            except ResponseError:  # a key of the wrong type, a counter that is no number: not a replica's
                self.trust.reject("state_malformed")
                await self._repair(keys=keys)
                res = await self._reserve(keys=keys, args=[*args, turn, int(self._synced), longest])
            if int(res[0]) == 2:  # Redis lost this replica's state: put it back before counting anything
                async with self._resync_lock:
                    if self._resyncs == seen:  # else a concurrent admission (or the heartbeat) did it
                        await self._resync(False)
                if hard and not self._room(key, model, now, hard, self._cautious_until - now):
                    return False
                res = await self._reserve(keys=keys, args=[*args, turn, 1, longest])
            if int(res[0]) == 0 and len(res) > 4 and not await self._genuine(res, model):
                # Refused by a value no replica wrote (now deleted): ask again (the turn was taken already).
                turn_taken = res[3]
                res = await self._reserve(keys=keys, args=[*args, 0, 1, longest])
                if int(res[0]) == 0:
                    res = [*res[:3], turn_taken, *res[4:]]
                elif int(res[0]) == 1:
                    res = [*res[:5], turn_taken]
        except REDIS_ERRORS as exc:
            self.redis_failed(exc)
            return self._admit_local(key, model, now, member)
        if self._failing_since is not None:
            self.redis_ok()
        self._synced = True
        if int(res[0]) == 2:  # emptied again within the same call: let the next choice try
            self.cooldowns[(key.scope, model)] = Cooldown(now + 0.05, "cluster")
            return False
        turn = int(res[5] if int(res[0]) == 1 else res[3])
        if turn >= 0:  # the next round-robin turn, for this replica's next pick
            self._turns.setdefault(model, deque()).append(turn)
        if int(res[0]) == 1:
            key.consecutive_failures = int(res[4])  # the cluster's count: failures elsewhere, or cleared elsewhere
            # The scope's cluster-wide usage before this call: quota_aware ranks (and /pool/headroom shows) it.
            self.tracker.observe_shared(key.scope, model, int(res[1]) - 1, int(res[3]), int(res[2]) - 1, now)
            self._reserved(key, model, member, now, bool(hard))
            return True
        wait, reason = int(res[1]) / 1000, shared.text(res[2])
        # Cool the whole scope here until Redis says it frees up: choose() skips it without asking again.
        source = "limit" if reason in _DIM.values() else "upstream"  # a hard limit used up, or a 429's cooldown
        self.cooldowns[(key.scope, model)] = Cooldown(
            now + max(wait, 0.05), _REASON.get(reason, "cluster"), source=source
        )
        return False

    async def _genuine(self, refusal: list[Any], model: str) -> bool:
        """Whether the cooldown or learned limit that refused a call was written by a replica (its tag); if not, it
        is deleted (compare-and-delete) and counted."""
        where, field, raw = (shared.text(v) for v in refusal[4:7])
        if field:
            ok = self.trust.unsigned(raw, "learned", model.removeprefix("models/"), field, reason="limit_forged")
        else:
            ok = self.trust.unsigned(raw, "cooldown", where, reason="cooldown_forged")
        if ok is not None:
            return True
        await self._forget_state(keys=[where], args=[field, raw])
        return False

    def _hard(self, scope: str, model: str) -> dict[str, int]:
        """The limits that refuse (configured or learned); the built-in table only orders the choice."""
        lim, sources = self.tracker.limits(scope, model), self.tracker.sources(scope, model)
        return {
            d: int(getattr(lim, d))
            for d in ("rpm", "rpd", "tpm")
            if sources.get(d) in ("configured", "learned") and getattr(lim, d) is not None
        }

    def _admit_local(self, key: Key, model: str, now: float, member: str) -> bool:
        hard = self._hard(key.scope, model)
        if hard and not self._room(key, model, now, hard, 1.0):
            return False
        self.admitted_local += 1
        if len(self._offline) < 100_000:  # bounded: a day-long outage at full speed still fits
            self._offline[member] = (key.scope, model, int(now * 1000))
        self._reserved(key, model, member, now, bool(hard))
        return True

    def _room(self, key: Key, model: str, now: float, hard: dict[str, int], wait: float) -> bool:
        """The degraded rule: is this replica's view of the scope below 1/N of each hard limit? Else cool it."""
        use = self.tracker.usage(key.scope, model, now)
        n = max(1, self.replicas)
        for dim, limit in hard.items():
            if int(use.get(f"{dim}_used") or 0) >= limit // n:
                self.cooldowns[(key.scope, model)] = Cooldown(now + max(wait, 0.05), _REASON[dim], source="limit")
                return False
        return True

    def _reserved(self, key: Key, model: str, member: str, now: float, hard: bool) -> None:
        members = self._members.setdefault((key.id, model), [])
        members.append(member)
        if len(members) > _MEMBERS_PER_KEY:
            del members[0]
        if not hard:  # nothing is refused by this scope's window: it refills itself within the minute
            return
        ms = int(now * 1000)
        recent = self._recent
        recent[member] = (ms, key.scope, model)
        while recent:
            first = next(iter(recent))
            if recent[first][0] > ms - 60_000 and len(recent) <= 200_000:
                break
            del recent[first]

    def _forget(self, member: str) -> None:
        """A reservation given back (the upstream refused or never saw the call): not to be put back."""
        self._recent.pop(member, None)
        self._offline.pop(member, None)

    def _keys(self, scope: str, model: str, now: float) -> list[str]:
        return shared.scope_keys(self.prefix, scope, model.removeprefix("models/"), pacific_day(now).isoformat())

    def _take(self, key: Key, model: str) -> str | None:
        members = self._members.get((key.id, model))
        return members.pop() if members else None

    # -- re-check probes ---------------------------------------------------------------------------------------------
    async def claim_probes(self, seconds: dict[str, float]) -> set[str]:
        """The key ids this replica may probe now: the probe slot `probe:{id}` is taken for the key's re-check
        interval by the first replica to ask. With Redis away every replica probes for itself (a probe lists one
        model and costs no quota; keys coming back matters more than a few duplicate probes)."""
        pipe = self.redis.pipeline(transaction=False)
        for kid, s in seconds.items():
            px = max(1000, int(s * 1000))
            await self._probe(keys=[f"{self.prefix}:probe:{kid}"], args=[self.replica, px, 2 * px], client=pipe)
        try:
            won = await pipe.execute()
        except REDIS_ERRORS:
            return set(seconds)
        return {kid for kid, ok in zip(seconds, won, strict=True) if ok}

    # -- outcomes (settled in Redis in the background) --------------------------------------------------------------
    def succeeded(self, key: Key, model: str, tokens: int | None = None) -> None:
        # Only with a streak is there a shared count to clear (rare: no write per call). While degraded every success
        # is remembered: another replica's failures during the outage may have come before it.
        streak = key.consecutive_failures > 0 or self.degraded
        super().succeeded(key, model, tokens)
        if streak:
            self._clear_failures(key)
        member = self._take(key, model)
        if tokens:
            now = self.clock()
            name = member or f"{self.replica}:t{next(self._seq)}"
            if member in self._recent:  # a hard-limited scope: kept to be put back
                self._recent_tokens.append((int(now * 1000), key.scope, model, f"{name}:{tokens}"))
                while self._recent_tokens and (
                    self._recent_tokens[0][0] <= now * 1000 - 60_000 or len(self._recent_tokens) > 200_000
                ):
                    self._recent_tokens.popleft()
            if not self.degraded:
                self._queue_tokens(self._keys(key.scope, model, now)[2], int(now * 1000), name, tokens)

    def rate_limited(self, key: Key, model: str, violation: QuotaViolation) -> Cooldown:
        cd = super().rate_limited(key, model, violation)
        member = self._take(key, model) or ""
        self._forget(member)
        if not self.degraded:
            now = self.clock()
            until = cooldown_until(violation, now, self.default_cooldown_s)
            dim = _DIM.get(violation.kind, "")
            limit = -1 if violation.limit is None else violation.limit
            keys = self._keys(key.scope, model, now)
            until_ms = int(until * 1000)
            args = [member, int(now * 1000), until_ms, dim, limit]
            args.append(self.trust.signed(str(until_ms), "cooldown", keys[3]))
            args.append(self._learned_value(model, dim, limit) if dim and limit >= 0 else "")
            self._spawn(self._learn(key.scope, keys, model, violation, args))
        return cd

    def _queue_tokens(self, tok_key: str, ms: int, name: str, tokens: int) -> None:
        """Token counts reach Redis in one pipeline per `tokens_flush_s`, not one round trip per call: the round
        trip cost every call event-loop time. Tokens are only known once an answer is complete, so the other
        replicas' tpm view was always a little behind; one flush interval more is nothing against a 60 s window."""
        first = not self._token_batch
        self._token_batch.append((tok_key, ms, name, tokens))
        if first and not self._spawn(self._flush_tokens()):
            self._token_batch.clear()  # no loop to settle on (tools, tests of the local part)

    async def _flush_tokens(self) -> None:
        await asyncio.sleep(self.tokens_flush_s)
        batch, self._token_batch = self._token_batch, []
        pipe = self.redis.pipeline(transaction=False)
        for tok_key, ms, name, tokens in batch:
            await self._tokens(keys=[tok_key], args=[ms, name, tokens], client=pipe)
        await pipe.execute()

    def _learned_value(self, model: str, dim: str, limit: int) -> str:
        return self.trust.signed(str(limit), "learned", model.removeprefix("models/"), dim)

    async def _learn(self, scope: str, keys: list[str], model: str, violation: QuotaViolation, args: list[Any]) -> None:
        learned = int(await self._limited(keys=keys[:6], args=args))
        if learned >= 0 and violation.limit is None:
            # The cluster-wide usage is the limit; the local window saw only this replica's share.
            dim = str(args[3])
            await self._learn_limit(keys=keys[4:6], args=[dim, self._learned_value(model, dim, learned)])
            known = QuotaViolation(violation.kind, violation.quota_id, violation.retry_delay_s, learned, model)
            self.tracker.learn(scope, model, known, self.clock())

    def failed(self, key: Key, message: str, model: str | None = None) -> None:
        if not self.degraded:
            # The shared count decides (`_counted`, once Redis answered and its members' tags are checked): the local
            # copy came from Redis and must not disable the key on its own.
            key.consecutive_failures = min(key.consecutive_failures, max(0, self.failure_threshold - 2))
        super().failed(key, message, model)
        ms = int(self.clock() * 1000)
        name = f"{self.replica}:{next(self._seq)}"
        member = f"{name}:{self.trust.tag('failure', key.id, str(ms), name)[:16]}"
        own = self._own_fails.setdefault(key.id, [])
        own.append((ms, member))
        if len(own) > _OWN_FAILURES:
            del own[0]
        if not self.degraded:  # else merged when Redis is back
            self._spawn(self._count_failure(key, ms, member))
        if model is not None:  # the upstream refused or never saw it: give the slot back cluster-wide
            self._release_member(key, model)
        elif (member_model := next((m for (k, m) in self._members if k == key.id), None)) is not None:
            self._take(key, member_model)  # a timeout: the upstream may have served it, it stays counted

    def invalid(self, key: Key, message: str) -> None:
        super().invalid(key, message)
        self.changed.add(key.id)
        for k, m in list(self._members):
            if k == key.id:
                self._release_member(key, m)

    async def _count_failure(self, key: Key, ms: int, member: str) -> None:
        keys = shared.failure_keys(self.prefix, key.id)
        n = int(await self._failures(keys=keys, args=[key.id, -1, FAILURES_TTL_MS, 0, ms, member]))
        self._counted(key, await self._verified(key, n))

    async def _verified(self, key: Key, n: int) -> int:
        """The key's shared failure count `n`, counting only the failures replicas recorded (tagged members) once it
        would disable the key; the others are removed."""
        if n < self.failure_threshold:
            return n
        where = shared.failure_keys(self.prefix, key.id)[0]
        forged = []
        entries: list[Any] = await self.redis.zrange(where, 0, 2 * FAILURES_KEPT, withscores=True)
        for raw, score in entries:
            member = shared.text(raw)
            name, _, tag = member.rpartition(":")
            if not name or not hmac.compare_digest(tag, self.trust.tag("failure", key.id, str(int(score)), name)[:16]):
                forged.append(member)
        if forged:
            for _ in forged:
                self.trust.reject("failure_forged")
            await self.redis.zrem(where, *forged)
        return n - len(forged)

    def _counted(self, key: Key, n: int) -> None:
        key.consecutive_failures = n
        self.dirty.add(key.id)
        if n >= self.failure_threshold and key.status == "active":  # the failures of every replica add up
            self.disable(key, "failures")

    def _clear_failures(self, key: Key) -> None:
        """A success or reset of `key` here: its failures before now no longer count, on any replica."""
        ms = int(self.clock() * 1000)
        self._own_ok[key.id] = ms
        self._own_fails.pop(key.id, None)
        if not self.degraded:  # else merged when Redis is back
            keys = shared.failure_keys(self.prefix, key.id)
            self._spawn(self._failures(keys=keys, args=[key.id, ms, FAILURES_TTL_MS, 0]))

    def _release_member(self, key: Key, model: str) -> None:
        member = self._take(key, model)
        if member:
            self._forget(member)
        if member and not self.degraded:
            keys = self._keys(key.scope, model, self.clock())
            self._spawn(self._release(keys=keys[:2], args=[member]))

    # -- status changes (broadcast after persisting) ------------------------------------------------------------------
    def load(self, key: Key) -> None:
        super().load(key)
        self.persisted[key.id] = (key.requests, key.successes, key.total_failures)

    def add(self, specs: Iterable[KeySpec]) -> tuple[list[str], int]:
        added, dups = super().add(specs)
        self.changed.update(added)
        return added, dups

    def remove(self, kid: str) -> bool:
        self.changed.add(kid)
        return super().remove(kid)

    def enable(self, key: Key) -> None:
        super().enable(key)
        self._clear_failures(key)
        self.changed.add(key.id)

    def disable(self, key: Key, reason: str = "manual") -> None:
        super().disable(key, reason)
        self.changed.add(key.id)

    def reset(self, key: Key) -> None:
        super().reset(key)
        self._clear_failures(key)
        self.changed.add(key.id)

    def checked(self, key: Key, ok: bool, message: str | None = None) -> None:
        before = key.status
        super().checked(key, ok, message)
        if ok:
            self._clear_failures(key)
        if key.status != before:
            self.changed.add(key.id)

    # -- background -------------------------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> bool:
        async def settle() -> None:
            try:
                await coro
            except REDIS_ERRORS as exc:
                self.redis_failed(exc)

        try:
            task = asyncio.get_running_loop().create_task(settle())
        except RuntimeError:  # no loop (tools, tests of the local part): nothing to settle remotely
            coro.close()
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def redis_failed(self, exc: BaseException) -> None:
        """A round trip failed (timeout, refused, reset). Degraded mode starts once failures are sustained."""
        now = time.monotonic()
        self.failed_trips += 1
        self._heard = 0
        if self._failing_since is None:
            self._failing_since, self._failed_trips = now, 0
        self._failed_trips += 1
        if (
            self.degraded
            or self._failed_trips < self.degrade_failures
            or now - self._failing_since < self.degrade_after_s
        ):
            return
        self.degraded = True
        self.degraded_since = time.time() - (now - self._failing_since)
        event(
            log,
            "redis_unreachable",
            logging.WARNING,
            replica=self.replica,
            error=type(exc).__name__,
            failed_round_trips=self._failed_trips,
            mode=f"local limits at 1/{max(1, self.replicas)}",
        )

    def redis_ok(self) -> None:
        """A round trip succeeded: a run of failures too short to degrade is over."""
        if not self.degraded:
            self._failing_since, self._failed_trips = None, 0

    def heard(self) -> bool:
        """A heartbeat reached Redis; True when degraded mode may end (several in a row: hysteresis)."""
        if not self.degraded:
            self.redis_ok()
            return False
        self._heard += 1
        return self._heard >= self.recover_heartbeats

    async def recover(self) -> None:
        """Called by the heartbeat once Redis answers again: add the offline admissions, merge the key failures and
        successes seen meanwhile, then gate through Redis."""
        offline = await self.reconcile()
        await self.resync(recovering=True)
        since = self.degraded_since or time.time()
        self.degraded, self.degraded_since = False, None
        self._failing_since, self._failed_trips, self._heard = None, 0, 0
        event(
            log,
            "redis_recovered",
            replica=self.replica,
            reconciled=offline,
            degraded_s=round(time.time() - since, 1),
        )

    async def reconcile(self) -> int:
        """Add the calls admitted locally (degraded, or a reservation that failed) to the shared windows."""
        offline, self._offline = self._offline, {}
        try:
            pipe = self.redis.pipeline(transaction=False)
            now_ms = int(self.clock() * 1000)
            for member, (scope, model, ms) in offline.items():
                keys = self._keys(scope, model, ms / 1000)
                await self._reconcile(keys=keys[:2], args=[member, ms, now_ms, 2 * 86_400_000], client=pipe)
            if offline:
                await pipe.execute()
        except REDIS_ERRORS:
            self._offline = offline | self._offline
            raise
        return len(offline)

    async def resync(self, recovering: bool = False) -> None:
        async with self._resync_lock:
            await self._resync(recovering)

    async def _resync(self, recovering: bool) -> None:
        """Put this replica's part of the shared state back (after an outage, or Redis emptied): its reservations and
        token entries of the last minute under their own names (idempotent), its key failures (merged by time); then
        set its marker. For `RESYNC_GRACE_S` the degraded rule gates too: other replicas may not have resynced yet."""
        now = self.clock()
        cutoff = int(now * 1000) - 60_000
        pipe = self.redis.pipeline(transaction=False)
        for member, (ms, scope, model) in list(self._recent.items()):
            if ms > cutoff:
                win = self._keys(scope, model, ms / 1000)[0]
                pipe.zadd(win, {member: ms})
                pipe.pexpire(win, 61_000)
        for ms, scope, model, entry in list(self._recent_tokens):
            if ms > cutoff:
                tok = self._keys(scope, model, ms / 1000)[2]
                pipe.zadd(tok, {entry: ms})
                pipe.pexpire(tok, 61_000)
        pipe.set(self.marker, self.replica, px=MARKER_TTL_MS)
        await pipe.execute()
        await self._merge_failures()
        if self._synced or recovering:
            self._cautious_until = self.clock() + self.resync_grace_s
            event(log, "redis_state_resynced", replica=self.replica, reservations=len(self._recent))
        self._synced = True
        self._resyncs += 1

    @property
    def offline(self) -> int:
        """Calls admitted locally and not yet added to the shared windows."""
        return len(self._offline)

    def cautious(self) -> bool:
        return self.clock() < self._cautious_until

    async def _merge_failures(self) -> None:
        """Send every key's own failures since its own last success, and the time of that success (idempotent: the
        members already in Redis stay once, so a merge can be repeated, and Redis may or may not have kept its state).
        """
        kids = [k for k in {*self._own_fails, *self._own_ok} if k in self.keys]
        if not kids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for kid in kids:
            args: list[Any] = [kid, self._own_ok.get(kid, -1), FAILURES_TTL_MS, 1]
            for ms, member in self._own_fails.get(kid, []):
                args += [ms, member]
            await self._failures(keys=shared.failure_keys(self.prefix, kid), args=args, client=pipe)
        counts = await pipe.execute()
        later = []
        for kid, n in zip(kids, counts, strict=True):
            key = self.keys.get(kid)
            if key is None:
                continue
            self.dirty.add(kid)
            if not int(n):
                key.consecutive_failures = 0
                continue
            # Not final yet: a replica that has not merged may hold a later success of this key. Below the threshold
            # until the grace has passed (a failure meanwhile must not disable it on an intermediate count), then
            # re-read and applied.
            key.consecutive_failures = min(int(n), self.failure_threshold - 1)
            later.append(key)
        if later:
            self._spawn(self._recount_later(later))

    async def _recount_later(self, keys: list[Key]) -> None:
        await asyncio.sleep(self.resync_grace_s)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            args: list[Any] = [key.id, -1, FAILURES_TTL_MS, 1]
            await self._failures(keys=shared.failure_keys(self.prefix, key.id), args=args, client=pipe)
        for key, n in zip(keys, await pipe.execute(), strict=True):
            self._counted(key, await self._verified(key, int(n)))

    async def drain(self) -> None:
        """Wait for the background settlements (shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)


def _n(v: int | None) -> int:
    return -1 if v is None else int(v)
