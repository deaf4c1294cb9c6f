"""When does each (project, model) run out of its daily quota? Live, from the pool's own counters — never a scan.

`RateMeter.sample()` runs on a schedule (every `SAMPLE_S`, on the event loop: it reads in-memory counters only)
and keeps a smoothed request rate per (scope, model) from the change of the tracker's Pacific-day count. The rate
is an exponentially weighted average with time constant `TAU_S` over irregular intervals, bias-corrected so that a
meter started a minute ago reports the average of that minute rather than something pulled towards zero.

`quota_view()` turns counters, limits and rates into the admin API's answer: per (scope, model) and per model for
the whole pool — used today, the RPD limit and its source, the rate, the projected exhaustion (`None` = lasts until
the Pacific midnight reset), and the per-minute view (RPM headroom now, calls refused in the next hour at the
current rate). Every function takes `now` (epoch seconds): tests own the clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy_service.quota import next_pacific_midnight

if TYPE_CHECKING:
    from proxy_service.pool import Pool

SAMPLE_S = 10.0
TAU_S = 1800.0  # half an hour: at 1 call/min the sawtooth of single calls stays within ±2 % (±10 min over 8 h)


@dataclass
class _Rate:
    t: float
    count: int
    day_end: float
    ewma: float = 0.0  # calls per second, not yet bias-corrected
    weight: float = 0.0  # the EWMA's total weight so far (→ 1 after a few TAU_S)

    @property
    def per_s(self) -> float | None:
        return self.ewma / self.weight if self.weight > 0 else None


class RateMeter:
    """A smoothed call rate per (scope, model), from successive readings of the tracker's day counter."""

    def __init__(self, tau_s: float = TAU_S) -> None:
        self.tau_s = tau_s
        self._rates: dict[tuple[str, str], _Rate] = {}

    def observe(self, scope: str, model: str, used_today: int, now: float) -> None:
        """One reading of (scope, model)'s Pacific-day request count at `now`."""
        day_end = next_pacific_midnight(now)
        r = self._rates.get((scope, model))
        if r is None:
            self._rates[(scope, model)] = _Rate(now, used_today, day_end)
            return
        dt = now - r.t
        if dt <= 0:
            return
        # A new quota day starts from zero; an un-counted refused call can make the count step back by one.
        delta = used_today if day_end != r.day_end else max(0, used_today - r.count)
        a = 1.0 - math.exp(-dt / self.tau_s)
        r.ewma += a * (delta / dt - r.ewma)
        r.weight += a * (1.0 - r.weight)
        r.t, r.count, r.day_end = now, used_today, day_end

    def sample(self, pool: Pool, now: float) -> None:
        """Read every (scope, model) the tracker knows; forget pairs it no longer holds."""
        tracker = pool.tracker
        pairs = tracker.pairs()
        for scope, model in pairs:
            self.observe(scope, model, int(tracker.usage(scope, model, now)["rpd_used"] or 0), now)
        live = set(pairs)
        for k in [k for k in self._rates if k not in live]:
            del self._rates[k]

    def per_min(self, scope: str, model: str) -> float:
        r = self._rates.get((scope, model))
        per_s = r.per_s if r is not None else None
        return per_s * 60.0 if per_s is not None else 0.0


def project_exhaustion(used: int, limit: int | None, rate_per_min: float, now: float, reset: float) -> float | None:
    """Epoch when `used` reaches `limit` at `rate_per_min`, or None when it lasts until `reset` (or has no limit)."""
    if limit is None:
        return None
    if used >= limit:
        return now
    if rate_per_min <= 0:
        return None
    at = now + (limit - used) / rate_per_min * 60.0
    return at if at < reset else None


def refused_next_hour(
    rate_per_min: float, rpm_cap: int | None, exhausts_at: float | None, now: float, reset: float
) -> int:
    """Calls refused in the next 60 minutes at a steady `rate_per_min`: above the per-minute capacity, and all of
    them between the daily exhaustion and the reset."""
    if rate_per_min <= 0:
        return 0
    served_per_min = rate_per_min if rpm_cap is None else min(rate_per_min, float(rpm_cap))
    end = now + 3600.0
    dry_from = min(max(exhausts_at, now), end) if exhausts_at is not None else end
    dry_to = min(reset, end)
    dry_min = max(0.0, dry_to - dry_from) / 60.0
    served = served_per_min * (60.0 - dry_min)
    return max(0, round(rate_per_min * 60.0 - served))


def _int(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


def _sum(values: Iterable[int | None]) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None  # one unlimited project makes the pool unlimited for that dimension
        total += v
    return total


def user_model(model: str) -> bool:
    """Whether a quota bucket is a model as users name it: not the listing bucket (`*`) nor the countTokens bucket
    (`<model>#count`), which the pool counts apart because Google does."""
    return model != "*" and "#" not in model


def quota_view(pool: Pool, meter: RateMeter, now: float, shown: Callable[[str], bool] = user_model) -> dict[str, Any]:
    """The per-day exhaustion view of every (scope, model) with traffic today, and of the pool per model — for the
    models `shown` admits (the admin API: real models only, no pseudo buckets or names no model answers to).

    Times are epoch seconds here; the admin layer renders them as ISO-8601 UTC.
    """
    tracker = pool.tracker
    reset = next_pacific_midnight(now)
    keys = list(pool.keys.values())
    active_scopes = {k.scope for k in keys if k.status == "active"}
    key_scopes = {k.id for k in keys if not k.project}  # a project-less key is its own scope
    usage: dict[tuple[str, str], dict[str, Any]] = {}
    for scope, model in tracker.pairs():
        if not shown(model):
            continue
        u = tracker.usage(scope, model, now)
        if u["rpd_used"] or u["rpm_used"]:
            usage[(scope, model)] = u
    models = sorted({m for _s, m in usage})

    items: list[dict[str, Any]] = []
    pool_rows: list[dict[str, Any]] = []
    for model in models:
        scopes = sorted(set(active_scopes) | {s for s, m in usage if m == model})
        rows: list[dict[str, Any]] = []
        for scope in scopes:
            u = usage.get((scope, model)) or tracker.usage(scope, model, now)
            used, limit = int(u["rpd_used"] or 0), _int(u["rpd_limit"])
            rate = meter.per_min(scope, model)
            exhausts = project_exhaustion(used, limit, rate, now, reset)
            rpm_limit = _int(u["rpm_limit"])
            row: dict[str, Any] = {
                "project": None if scope in key_scopes else scope,
                "key_id": scope if scope in key_scopes else None,
                "model": model,
                "active": scope in active_scopes,
                "used": used,
                "limit": limit,
                "limit_source": tracker.limit_source(scope, model, "rpd"),
                "rate_per_min": round(rate, 3),
                "exhausts_at": exhausts,
                "resets_at": reset,
                "rpm_used": int(u["rpm_used"] or 0),
                "rpm_limit": rpm_limit,
                "rpm_headroom": None if rpm_limit is None else max(0, int(rpm_limit) - int(u["rpm_used"] or 0)),
            }
            rows.append(row)
        items.extend(r for r in rows if r["used"] or r["rpm_used"] or r["active"])
        live = [r for r in rows if r["active"]]
        used = sum(r["used"] for r in live)
        limit = _sum(r["limit"] for r in live)
        rate = sum(r["rate_per_min"] for r in live)
        rpm_cap = _sum(r["rpm_limit"] for r in live)
        exhausts = project_exhaustion(used, limit, rate, now, reset) if live else None
        pool_rows.append(
            {
                "model": model,
                "projects": len(live),
                "used": used,
                "limit": limit,
                "rate_per_min": round(rate, 3),
                "exhausts_at": exhausts,
                "resets_at": reset,
                "rpm_used": sum(r["rpm_used"] for r in live),
                "rpm_limit": rpm_cap,
                "rpm_headroom": None if rpm_cap is None else max(0, rpm_cap - sum(r["rpm_used"] for r in live)),
                "refused_next_hour": refused_next_hour(rate, rpm_cap, exhausts, now, reset),
            }
        )
    soonest = min((p for p in pool_rows if p["exhausts_at"] is not None), key=lambda p: p["exhausts_at"], default=None)
    return {
        "now": now,
        "items": items,
        "pool": pool_rows,
        "soonest": None if soonest is None else {"model": soonest["model"], "exhausts_at": soonest["exhausts_at"]},
    }
