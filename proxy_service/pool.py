"""The key pool: keys, statuses, selection strategies, cooldowns and accounting.

Everything here runs on the event loop and does no I/O. Quota facts (429 parsing, windows, limits) live in
`quota.py`; the pool turns them into decisions:

- cooldowns are per (scope, model), where scope is the key's project (keys of one project share a quota) or the
  key itself when its project is unknown. A per-minute 429 cools the scope for `retryDelay`, a per-day 429 until
  the next Pacific midnight, a bare 429 for `default_cooldown_s`;
- invalid-key answers mark the key `invalid`; consecutive transient failures past `failure_threshold` disable it
  (`disabled_reason="failures"`); both come back when a re-check passes. A success resets the streak;
- `quota_aware` picks the key whose (scope, model) has the most headroom. Only hard limits (configured, or learned
  from Google's 429s) refuse a call; the built-in free-tier table orders the choice and nothing else;
- billing tiers (`set_billing`): a project is free unless `project_tiers` says paid. `quota_aware` serves from free
  scopes with headroom first, then paid ones, then free scopes full only by the built-in guess; paid scopes are left
  out for the rest of the Pacific quota day once their spend (`spent`, told by the relay) reaches
  `paid_daily_cap_usd`. A paid scope's success never disproves the free-tier guess (its limits are another tier's);
- `retry_after(model)` / `headroom(model)` look without choosing (no cursor moves): every 429 Keyrack answers states
  the pool's earliest-usable time for the model.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from proxy_service.errors import PoolExhausted
from proxy_service.keys import KeySpec, key_id, mask
from proxy_service.logs import event
from proxy_service.quota import (
    KIND_OF_DIM,
    QUOTA_IDS,
    ModelLimits,
    QuotaTracker,
    QuotaViolation,
    cooldown_until,
    next_pacific_midnight,
    pacific_day,
    quota_violation,
)

KeyStatus = Literal["active", "invalid", "disabled"]
log = logging.getLogger("keyrack.pool")  # status changes only (rare); never the secret, only the key id


def _status_changed(key: Key, before: str, reason: str, detail: str | None = None) -> None:
    if key.status != before:
        level = logging.INFO if key.status == "active" else logging.WARNING
        fields = {"key_id": key.id, "project": key.project, "from": before, "to": key.status, "reason": reason}
        event(log, "key_status", level, **fields, **({"detail": detail[:200]} if detail else {}))


@dataclass(eq=False)
class Key:
    id: str
    secret: str
    project: str | None = None
    label: str | None = None
    status: KeyStatus = "active"
    disabled_reason: str | None = None  # "manual" | "failures"
    created_at: float = field(default_factory=time.time)
    last_used_at: float | None = None
    last_checked_at: float | None = None
    consecutive_failures: int = 0
    total_failures: int = 0
    requests: int = 0
    successes: int = 0
    last_error: str | None = None
    in_flight: int = 0

    @property
    def scope(self) -> str:
        return self.project or self.id

    @property
    def masked(self) -> str:
        return mask(self.secret)

    @property
    def needs_recheck(self) -> bool:
        return self.status == "invalid" or (self.status == "disabled" and self.disabled_reason == "failures")


def stored_epoch(ts: datetime | None) -> float | None:
    """A stored naive-UTC timestamp as epoch seconds."""
    return ts.replace(tzinfo=UTC).timestamp() if ts else None


def key_from_row(r: Mapping[str, Any]) -> Key:
    """A key as stored in a `keys` table row (DuckDB embedded or PostgreSQL in cluster mode)."""
    return Key(
        id=r["key_id"],
        secret=r["secret"],
        project=r["project"],
        label=r["label"],
        status=r["status"],
        disabled_reason=r["disabled_reason"],
        created_at=stored_epoch(r["created_at"]) or time.time(),
        last_used_at=stored_epoch(r["last_used_at"]),
        last_checked_at=stored_epoch(r["last_checked_at"]),
        consecutive_failures=r["consecutive_failures"] or 0,
        total_failures=r["total_failures"] or 0,
        requests=r["requests"] or 0,
        successes=r["successes"] or 0,
        last_error=r["last_error"],
    )


@dataclass(frozen=True)
class Cooldown:
    until: float
    reason: str  # "minute" | "day" | "tokens" | "unknown" (cluster mode: also "cluster")
    quota_id: str | None = None
    # "upstream": Google answered 429 (here or, in cluster mode, on another replica); "limit": cluster mode's shared
    # admission found a configured or learned limit used up (`reason` is its kind).
    source: str = "upstream"


@dataclass(frozen=True)
class Refusal:
    """Why one scope cannot take a call for a model now, and until when."""

    until: float
    cause: str  # "upstream_cooldown" | "configured_limit" | "learned_limit"
    kind: str  # "minute" | "day" | "tokens" | "unknown"
    limit: int | None = None
    quota_id: str | None = None

    def describe(self) -> str:
        unit = _UNITS.get(self.kind, "requests")
        if self.limit is None:
            amount = unit
        else:
            amount = f"{self.limit:,} {unit if self.limit != 1 else unit.replace('s ', ' ', 1)}"
        if self.cause == "configured_limit":
            return f"at its configured limit of {amount} (model_limits)"
        if self.cause == "learned_limit":
            return f"at a limit learned from Google's 429s ({amount})"
        quota = f"{_PER.get(self.kind, '')} quota {self.quota_id}" if self.quota_id else "no quota details"
        return f"cooling down after Google answered 429 ({quota.strip()})"


_UNITS = {"minute": "requests per minute", "day": "requests per day", "tokens": "input tokens per minute"}
_PER = {"minute": "per-minute", "day": "per-day", "tokens": "per-minute token"}
_SOURCE = {"configured_limit": "configured", "learned_limit": "learned", "upstream_cooldown": "cooldown"}


def shown_status(key: Key, cooling: bool) -> str:
    """The status shown to people: "cooling" is derived (an active key whose scope has a live cooldown), never stored."""
    return "cooling" if key.status == "active" and cooling else key.status


class Pool:
    # Cluster mode (proxy_service/cluster/pool.py) must reserve each attempt in Redis: the relay awaits `admit()`
    # only when this is True, so the in-memory pool keeps its code path.
    clustered = False

    def __init__(
        self,
        strategy: str = "quota_aware",
        *,
        default_cooldown_s: float = 60.0,
        failure_threshold: int = 5,
        limits: dict[str, ModelLimits] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.strategy = strategy
        self.default_cooldown_s = default_cooldown_s
        self.failure_threshold = failure_threshold
        self.clock = clock
        self.tracker = QuotaTracker(limits)
        self.keys: dict[str, Key] = {}
        self.cooldowns: dict[tuple[str, str], Cooldown] = {}
        self.dirty: set[str] = set()  # key ids whose stored row is stale (persisted in batches, not per request)
        self.deleted: set[str] = set()
        self._rr = itertools.count()
        self.paid_projects: frozenset[str] = frozenset()
        self.paid_cap_usd: float | None = None
        self.paid_spent_usd = 0.0  # on paid projects since the last Pacific midnight (this process's calls)
        self.paid_peers_usd = 0.0  # the other replicas' paid spend of the same quota day (`Node.share_paid_spend`)
        self._spend_day_end = 0.0

    # -- billing tiers -------------------------------------------------------------------------------------------
    def set_billing(self, tiers: Mapping[str, str], paid_daily_cap_usd: float | None) -> None:
        self.paid_projects = frozenset(p for p, tier in tiers.items() if tier == "paid")
        self.paid_cap_usd = paid_daily_cap_usd

    def is_paid(self, key: Key) -> bool:
        return key.project is not None and key.project in self.paid_projects

    def spent(self, usd: float) -> None:
        """A call on a paid project cost `usd` (the relay's estimate from its usage)."""
        self._roll_day(self.clock())
        self.paid_spent_usd += usd

    def _roll_day(self, now: float) -> None:
        if now >= self._spend_day_end:
            self.paid_spent_usd, self._spend_day_end = 0.0, next_pacific_midnight(now)
            self.paid_peers_usd = 0.0

    def own_paid_spend(self, now: float) -> tuple[str, float]:
        """(the Pacific quota day, this process's paid spend in it): what the other replicas are told."""
        self._roll_day(now)
        return pacific_day(now).isoformat(), self.paid_spent_usd

    def peers_paid_spend(self, day: str, usd: float) -> None:
        """The other replicas' paid spend of quota day `day` (ignored once this process has moved on to another)."""
        if day == pacific_day(self.clock()).isoformat():
            self.paid_peers_usd = usd

    def paid_capped(self, now: float) -> bool:
        """Paid keys are out for the rest of the quota day: their spend reached the cap."""
        if self.paid_cap_usd is None or not self.paid_projects:
            return False
        self._roll_day(now)
        return self.paid_spent_usd + self.paid_peers_usd >= self.paid_cap_usd

    # -- membership ----------------------------------------------------------------------------------------------
    def add(self, specs: Iterable[KeySpec]) -> tuple[list[str], int]:
        """Add keys; returns (ids added, duplicates skipped)."""
        added, dups = [], 0
        for spec in specs:
            kid = key_id(spec.secret)
            if kid in self.keys:
                dups += 1
                continue
            self.keys[kid] = Key(id=kid, secret=spec.secret, project=spec.project, label=spec.label)
            self.deleted.discard(kid)
            self.dirty.add(kid)
            added.append(kid)
        return added, dups

    def load(self, key: Key) -> None:
        self.keys[key.id] = key

    def remove(self, kid: str) -> bool:
        key = self.keys.pop(kid, None)
        if key is None:
            return False
        self.dirty.discard(kid)
        self.deleted.add(kid)
        event(log, "key_deleted", key_id=kid, project=key.project)
        return True

    # -- status --------------------------------------------------------------------------------------------------
    def cooling_by_scope(self, now: float | None = None) -> dict[str, list[tuple[str, Cooldown]]]:
        """Live cooldowns, (model, cooldown) per scope (a project, or a key without one)."""
        now = self.clock() if now is None else now
        out: dict[str, list[tuple[str, Cooldown]]] = {}
        for (scope, model), cd in list(self.cooldowns.items()):
            if cd.until > now:
                out.setdefault(scope, []).append((model, cd))
        return out

    def cooldowns_of(self, key: Key, now: float | None = None) -> list[tuple[str, Cooldown]]:
        return self.cooling_by_scope(now).get(key.scope, [])

    def status_of(self, key: Key, now: float | None = None) -> str:
        return shown_status(key, bool(self.cooldowns_of(key, now)))

    def counts(self) -> dict[str, int]:
        out = {"active": 0, "cooling": 0, "invalid": 0, "disabled": 0}
        cooling = self.cooling_by_scope()
        for key in self.keys.values():
            out[shown_status(key, key.scope in cooling)] += 1
        return out

    def enable(self, key: Key) -> None:
        before = key.status
        key.status, key.disabled_reason, key.consecutive_failures = "active", None, 0
        self.dirty.add(key.id)
        _status_changed(key, before, "manual")

    def disable(self, key: Key, reason: str = "manual") -> None:
        before = key.status
        key.status, key.disabled_reason = "disabled", reason
        self.dirty.add(key.id)
        _status_changed(key, before, reason, key.last_error if reason == "failures" else None)

    def reset(self, key: Key) -> None:
        """Forget failures and cooldowns (an operator's "reset"); a manual disable stays."""
        key.consecutive_failures = 0
        key.last_error = None
        before = key.status
        if key.status == "invalid" or key.disabled_reason == "failures":
            key.status, key.disabled_reason = "active", None
        _status_changed(key, before, "reset")
        for k in [k for k in self.cooldowns if k[0] == key.scope]:
            del self.cooldowns[k]
        self.dirty.add(key.id)

    # -- looking (read-only: no cursor moves, nothing reserved) --------------------------------------------------
    def _ready_at(self, key: Key, model: str, now: float) -> float:
        """When `key` can take a call for `model`: its scope's cooldown, then its hard limits (never the guess)."""
        if self.is_paid(key) and self.paid_capped(now):
            return self._spend_day_end
        cd = self.cooldowns.get((key.scope, model))
        if cd is not None and cd.until > now:
            return cd.until
        return self.tracker.available_at(key.scope, model, now)

    def _earliest(self, model: str, now: float) -> float | None:
        """The earliest epoch any active key can take a call for `model`; None when no key is active."""
        best: float | None = None
        seen: set[str] = set()
        for key in self.keys.values():
            if key.status != "active" or key.scope in seen:
                continue
            seen.add(key.scope)  # keys of one scope share cooldowns and quota
            at = self._ready_at(key, model, now)
            if best is None or at < best:
                best = at
                if at <= now:
                    break
        return best

    def retry_after(self, model: str) -> float | None:
        """Seconds until some key can take a call for `model` (0.0: now); None when no key is active at all."""
        now = self.clock()
        at = self._earliest(model, now)
        return None if at is None else max(0.0, at - now)

    def headroom(self, model: str) -> float:
        """The largest free fraction for `model` among keys that could take a call now (0.0 when none can)."""
        now = self.clock()
        best = 0.0
        for key in self.keys.values():
            if key.status != "active" or self._ready_at(key, model, now) > now:
                continue
            best = max(best, self.tracker.headroom(key.scope, model, now))
        return best

    def free_share(self, model: str) -> float:
        """The pool's free share of `model`'s quota now: the mean over the active keys' scopes of each scope's free
        fraction (a cooling or used-up scope has none; an unknown limit counts as free). 0.0 when no key is active.
        What the clients' priority classes compare with their reserve (clients.py)."""
        now = self.clock()
        total, n = 0.0, 0
        seen: set[str] = set()
        for key in self.keys.values():
            if key.status != "active" or key.scope in seen:
                continue
            seen.add(key.scope)
            n += 1
            if self._ready_at(key, model, now) <= now:
                total += self.tracker.headroom(key.scope, model, now)
        return total / n if n else 0.0

    # -- choosing ------------------------------------------------------------------------------------------------
    def choose(self, model: str, exclude: set[str] | frozenset[str] = frozenset(), scope: str | None = None) -> Key:
        """The key for the next attempt at `model`, never one in `exclude` (keys already tried for this call); with
        `scope`, only a key of that project (the call names a resource it owns: resources.py).

        Raises PoolExhausted with the seconds until the earliest key is usable.
        """
        now = self.clock()
        candidates: list[Key] = []
        capped = self.paid_capped(now)
        for key in self.keys.values():
            if key.status != "active" or key.id in exclude or (scope is not None and key.scope != scope):
                continue
            if capped and self.is_paid(key):
                continue
            cd = self.cooldowns.get((key.scope, model))
            if cd is not None:
                if cd.until > now:
                    continue
                del self.cooldowns[(key.scope, model)]
            candidates.append(key)
        if not candidates:
            if scope is not None:
                raise self._scope_exhausted(model, scope, now, bool(exclude))
            raise self._exhausted(model, now, bool(exclude))
        if self.strategy == "round_robin":
            return self._round_robin(candidates, model)
        if self.strategy == "least_used":
            return min(candidates, key=lambda k: (k.in_flight, k.requests, k.last_used_at or 0.0))
        return self._most_headroom(candidates, model, now)

    def _round_robin(self, candidates: list[Key], model: str) -> Key:
        return candidates[next(self._rr) % len(candidates)]

    def _most_headroom(self, candidates: list[Key], model: str, now: float) -> Key:
        best: Key | None = None
        best_rank: tuple[int, float, int, float] | None = None
        open_of: dict[str, float] = {}  # scope → headroom, or -1.0 when a hard limit refuses it
        paid = self.paid_projects
        for key in candidates:
            h = open_of.get(key.scope)
            if h is None:
                h = self.tracker.headroom(key.scope, model, now)
                if h <= 0.0 and self.tracker.available_at(key.scope, model, now) > now:
                    h = -1.0  # a configured or learned limit is used up: this scope refuses
                open_of[key.scope] = h
            if h < 0.0:
                continue
            # Free scopes with headroom first, then paid ones (the overflow), then free scopes full only by the
            # built-in guess (still used: the guess refuses nothing). Most headroom first within each; inside a
            # scope spread over keys (fewest in flight, least recently used).
            tier = 1 if paid and key.project in paid else 0 if h > 0.0 else 2
            rank = (tier, -h, key.in_flight, key.last_used_at or 0.0)
            if best_rank is None or rank < best_rank:
                best, best_rank = key, rank
        if best is not None:
            return best
        raise self._exhausted(model, now, False)

    def _exhausted(self, model: str, now: float, tried: bool) -> PoolExhausted:
        at = self._earliest(model, now)
        if at is None:
            return PoolExhausted(
                "No usable upstream key: every key is invalid or disabled. Add or re-enable keys",
                self.default_cooldown_s,
                "no_usable_key",
            )
        if tried and at <= now:
            return PoolExhausted(f"Every usable key was tried for this call ({model})", 0.0, "all_tried")
        refusals: list[Refusal] = []
        seen: set[str] = set()
        for key in self.keys.values():
            if key.status == "active" and key.scope not in seen:
                seen.add(key.scope)
                r = self._refusal(key.scope, model, now)
                if r is not None:
                    refusals.append(r)
        exc = exhausted(model, refusals, at - now)
        if self.paid_capped(now):  # the paid projects' refusal is the cap, which no cooldown or limit describes
            reason = str(exc).rpartition("; retry in ")[0]
            cap = f"paid projects are out for the rest of the quota day (paid_daily_cap_usd {self.paid_cap_usd:g} reached)"
            exc = PoolExhausted(f"{reason}; {cap}", at - now, exc.cause if refusals else "paid_cap", exc.violation)
        return exc

    def _scope_exhausted(self, model: str, scope: str, now: float, tried: bool) -> PoolExhausted:
        """No key of the project that owns the call's resource can take it: 429 with when it frees up, or 503 when
        the project has no usable key at all (another project's key would only get Google's 403)."""
        active = [k for k in self.keys.values() if k.scope == scope and k.status == "active"]
        if not active:
            exc = PoolExhausted(
                f"The resource this call names belongs to project {scope}, which has no usable key (every key of it "
                "is invalid, disabled or removed); another project's key cannot see it",
                self.default_cooldown_s,
                "no_usable_key",
            )
            exc.status_code = 503
            return exc
        at = min(self._ready_at(k, model, now) for k in active)
        if tried and at <= now:
            return PoolExhausted(f"Every key of project {scope} was tried for this call ({model})", 0.0, "all_tried")
        refusal = self._refusal(scope, model, now)
        why = f" is {refusal.describe()}" if refusal is not None else " cannot take a call now"
        name = model.partition("#")[0]
        return PoolExhausted(
            f"The resource this call names belongs to project {scope}, which{why} for {name}; another project's key "
            "cannot see it",
            max(0.0, at - now),
            refusal.cause if refusal is not None else "no_usable_key",
        )

    def _refusal(self, scope: str, model: str, now: float) -> Refusal | None:
        """What keeps `scope` from taking a call for `model` now: a cooldown, else a hard limit used up."""
        cd = self.cooldowns.get((scope, model))
        if cd is not None and cd.until > now:
            if cd.source == "limit" and cd.reason in QUOTA_IDS:
                dim = next(d for d, k in KIND_OF_DIM.items() if k == cd.reason)
                source = self.tracker.limit_source(scope, model, dim)
                cause = "configured_limit" if source == "configured" else "learned_limit"
                return Refusal(cd.until, cause, cd.reason, getattr(self.tracker.limits(scope, model), dim))
            kind = cd.reason if cd.reason in QUOTA_IDS else "unknown"
            return Refusal(cd.until, "upstream_cooldown", kind, None, cd.quota_id)
        hit = self.tracker.refusal(scope, model, now)
        if hit is None:
            return None
        dim, limit, until = hit
        source = self.tracker.limit_source(scope, model, dim)
        cause = "learned_limit" if source == "learned" else "configured_limit"
        return Refusal(until, cause, KIND_OF_DIM[dim], limit)

    async def turn(self, model: str) -> None:
        """Have a cluster-wide round-robin turn ready for `choose()` (ClusterPool); the in-memory pool counts locally."""

    async def claim_probes(self, seconds: dict[str, float]) -> set[str]:
        """The keys this process may re-check now (ClusterPool: one replica per key and interval); here all of them."""
        return set(seconds)

    async def admit(self, key: Key, model: str) -> bool:
        """Reserve the attempt cluster-wide (ClusterPool); the in-memory pool has nothing to ask."""
        return True

    # -- learning ------------------------------------------------------------------------------------------------
    def started(self, key: Key, model: str) -> None:
        now = self.clock()
        key.in_flight += 1
        key.requests += 1
        key.last_used_at = now
        self.tracker.record(key.scope, model, now)
        self.dirty.add(key.id)

    def finished(self, key: Key) -> None:
        key.in_flight = max(0, key.in_flight - 1)

    def succeeded(self, key: Key, model: str, tokens: int | None = None) -> None:
        key.successes += 1
        key.consecutive_failures = 0
        # Dirty again: the key may have been persisted between the attempt's start and now, and a success left
        # unwritten stayed so until the key's next call (forever when none came: its counter one short).
        self.dirty.add(key.id)
        now = self.clock()
        if not self.is_paid(key):  # served past the built-in (free-tier) guess: the guess is dropped
            self.tracker.note_success(key.scope, model, now)
        if tokens:
            self.tracker.add_tokens(key.scope, model, now, tokens)

    def rate_limited(self, key: Key, model: str, violation: QuotaViolation) -> Cooldown:
        now = self.clock()
        # The refused attempt was counted when it started, but upstream did not count it: un-count it first (also
        # before learning a limit from the observed usage, which would otherwise come out one too high).
        self.tracker.forget(key.scope, model, now)
        self.tracker.learn(key.scope, model, violation, now)
        cd = Cooldown(cooldown_until(violation, now, self.default_cooldown_s), violation.kind, violation.quota_id)
        current = self.cooldowns.get((key.scope, model))
        if current is None or current.until < cd.until:
            self.cooldowns[(key.scope, model)] = cd
        key.last_error = f"429 {violation.quota_id or 'RESOURCE_EXHAUSTED'}"
        return cd

    def invalid(self, key: Key, message: str) -> None:
        before = key.status
        key.status = "invalid"
        _status_changed(key, before, "invalid_key", message)
        key.last_error = message[:300]
        key.total_failures += 1
        self.dirty.add(key.id)

    def failed(self, key: Key, message: str, model: str | None = None) -> None:
        """A transient failure (5xx, timeout, reset) that may be the key's: count toward disabling.

        With `model`, the attempt is also un-counted from the quota window: the upstream refused or never saw it
        (a 5xx answer, a connection that failed). Timeouts are left counted: the upstream may have served them.
        """
        if model is not None:
            self.tracker.forget(key.scope, model, self.clock())
        key.consecutive_failures += 1
        key.total_failures += 1
        key.last_error = message[:300]
        if key.consecutive_failures >= self.failure_threshold and key.status == "active":
            self.disable(key, "failures")
        self.dirty.add(key.id)

    def checked(self, key: Key, ok: bool, message: str | None = None) -> None:
        """Outcome of a verify / scheduled re-check."""
        key.last_checked_at = self.clock()
        if ok:
            if key.needs_recheck:
                before = key.status
                key.status, key.disabled_reason = "active", None
                _status_changed(key, before, "recheck_passed")
            key.consecutive_failures = 0
            key.last_error = None
        elif message:
            key.last_error = message[:300]
        self.dirty.add(key.id)


def exhausted(model: str, refusals: list[Refusal], wait_s: float) -> PoolExhausted:
    """The 429 for `model` when every scope refuses: it says why (a configured limit, a limit learned from Google,
    or cooling after Google's own 429s), and its quota details are those of the scope that frees up first (the one
    the wait is for), so a per-minute refusal never reads as a per-day one."""
    name = model.partition("#")[0]
    if not refusals:
        return PoolExhausted(f"Every key for {name} is out of quota", wait_s, "no_usable_key")
    refusals = sorted(refusals, key=lambda r: r.until)
    first = refusals[0]
    groups: dict[str, int] = {}
    for r in refusals:
        text = r.describe()
        groups[text] = groups.get(text, 0) + 1
    if len(groups) == 1:
        reason = f"Every key for {name} is {first.describe()}"
    else:
        parts = ", ".join(f"{n} project(s) {text}" for text, n in groups.items())
        reason = f"No key for {name} can take a call now: {parts}"
    violation = None
    if first.kind in QUOTA_IDS:
        violation = quota_violation(first.kind, name, _SOURCE[first.cause], first.limit, first.quota_id)
    return PoolExhausted(reason, wait_s, first.cause, violation)
