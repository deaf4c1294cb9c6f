"""Metric values for a set of rules at one instant: window figures from the database (on a worker thread) and live
figures from the pool (on the event loop, which owns it; reading it costs microseconds per key).

A value is keyed by its label set: () for an ungrouped rule, (("model", "gemini-2.5-pro"),) for one grouped by
model. `None` means no data (a rate over zero calls): never a breach.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import duckdb

from proxy_service.alerts import queries
from proxy_service.alerts.rules import METRICS, Rule
from proxy_service.alerts.state import Labels
from proxy_service.forecast.exhaustion import project_exhaustion
from proxy_service.quota import next_pacific_midnight

if TYPE_CHECKING:
    from proxy_service.clients import ClientBook
    from proxy_service.pool import Pool

QuotaRate = Callable[[str, str], float]  # (scope, model) → calls per minute

Values = dict[Labels, float | None]
FLAP_WINDOW_S = 3600.0


def naive_utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


def _labels(group_by: str, value: str) -> Labels:
    return ((group_by, value),) if group_by else ()


def _ratio(n: Any, d: Any) -> float | None:
    return float(n) / float(d) if d else None


def _request_value(rule: Rule, row: dict[str, Any]) -> float | None:
    calls = row["calls"]
    m = rule.metric
    if m == "calls":
        return float(calls)
    if m == "spend_usd":
        return float(row["spend_usd"] or 0)
    if m == "success_rate":
        return _ratio(row["success"], calls)
    if m == "error_rate":
        return _ratio(calls - row["success"], calls)
    if rule.outcome is not None:
        return _ratio(row[rule.outcome], calls)
    v = row.get(m)
    return float(v) if v is not None else None


def database_values(cur: duckdb.DuckDBPyConnection, rules: Iterable[Rule], now: float) -> dict[str, Values]:
    """Values of every database-backed rule; one query per distinct (source, window, filters, grouping)."""
    hi = naive_utc(now)
    cache: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    out: dict[str, Values] = {}
    for rule in rules:
        source = METRICS[rule.metric].source
        if source not in ("requests", "attempts", "volume"):
            continue
        lo = hi - timedelta(seconds=rule.window_s)
        filters = dict(rule.filters)
        key = (source, rule.window_s, rule.filters, rule.group_by)
        if key not in cache:
            read = {
                "requests": queries.request_window,
                "attempts": queries.attempt_window,
                "volume": queries.volume_window,
            }[source]
            cache[key] = read(cur, lo, hi, filters, rule.group_by)
        rows = cache[key]
        values: Values = {}
        for group, row in rows.items():
            labels = _labels(rule.group_by, group)
            if source == "attempts":
                values[labels] = _ratio(row["rate_limited"], row["attempts"])
            elif source == "volume":
                values[labels] = _ratio(row["now_calls"], row["then_calls"])
            else:
                values[labels] = _request_value(rule, row)
        if not rule.group_by and () not in values and source == "requests":
            values[()] = 0.0 if rule.metric in ("calls", "spend_usd") else None  # no calls at all in the window
        out[rule.id] = values
    return out


class FlapCounter:
    """Invalid ↔ active changes per key, seen by sampling key statuses at each evaluation (changes faster than
    the evaluation interval are counted once per interval)."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._changes: dict[str, deque[float]] = {}

    def observe(self, pool: Pool, now: float) -> None:
        seen = set()
        for key in list(pool.keys.values()):
            seen.add(key.id)
            before = self._last.get(key.id)
            if before is not None and {before, key.status} == {"invalid", "active"}:
                self._changes.setdefault(key.id, deque()).append(now)
            self._last[key.id] = key.status
        for kid in list(self._last):
            if kid not in seen:
                self._last.pop(kid, None)
                self._changes.pop(kid, None)
        for kid, q in list(self._changes.items()):
            while q and q[0] < now - FLAP_WINDOW_S:
                q.popleft()
            if not q:
                del self._changes[kid]

    def counts(self) -> dict[str, int]:
        return {kid: len(q) for kid, q in self._changes.items()}


def live_values(
    pool: Pool,
    rules: Iterable[Rule],
    demand: dict[str, float],
    flaps: FlapCounter,
    now: float | None = None,
    quota_rate: QuotaRate | None = None,
    model_known: Callable[[str], bool] | None = None,
    clients: ClientBook | None = None,
) -> dict[str, Values]:
    """Values of the pool-backed rules. `demand`: calls per minute per model over the recent window; `quota_rate`:
    the forecast's smoothed calls per minute of a (scope, model) (without it, nothing is projected to run out);
    `model_known`: which models count (the tracker holds every name a client sent with a token, made-up ones too,
    and a made-up name has no quota at Google whatever limits it inherits by prefix)."""
    known = model_known or (lambda _m: True)
    now = time.time() if now is None else now
    keys = list(pool.keys.values())
    cooling_scopes = {s for (s, _m), c in list(pool.cooldowns.items()) if c.until > now}
    out: dict[str, Values] = {}
    for rule in rules:
        source = METRICS[rule.metric].source
        filters = dict(rule.filters)
        if source == "pool":
            want = rule.metric.removesuffix("_keys")
            values: Values = {}
            if not rule.group_by:
                values[()] = 0.0
            for key in keys:
                if "project" in filters and key.project != filters["project"]:
                    continue
                status = "cooling" if key.status == "active" and key.scope in cooling_scopes else key.status
                labels = _labels(rule.group_by, key.project or "")
                values.setdefault(labels, 0.0)
                if status == want:
                    values[labels] = (values[labels] or 0.0) + 1
            out[rule.id] = values
        elif rule.metric == "quota_day_usage_pct":
            out[rule.id] = _quota_day(pool, rule, filters, now, known)
        elif rule.metric == "exhaustion_before_reset_min":
            out[rule.id] = _exhaustion(pool, rule, filters, quota_rate, now, known)
        elif rule.metric == "usable_capacity_pct":
            out[rule.id] = _capacity(pool, rule, filters, demand, now)
        elif source == "clients":
            out[rule.id] = {(): client_limit_use(clients, filters.get("client"), now)}
        elif source == "flaps":
            counts = flaps.counts()
            if rule.group_by:
                out[rule.id] = {_labels("key", k): float(n) for k, n in counts.items()}
            else:
                out[rule.id] = {(): float(max(counts.values(), default=0))}
    return out


def client_limit_use(book: ClientBook | None, client_id: str | None, now: float) -> float | None:
    """The most used limit of the client `client_id` (None: of every active client), in %; 0 when none has a limit,
    None when the named client does not exist (no data, never a breach)."""
    if book is None:
        return 0.0
    records = [book.by_id[client_id]] if client_id in book.by_id else [] if client_id else list(book.by_id.values())
    if client_id and not records:
        return None
    best = 0.0
    for c in records:
        if not c.active(now):
            continue
        c.usage.roll(now)
        for name, limit in c.limits.items():
            used = c.usage.used(name)
            share = 100.0 if limit <= 0 else 100.0 * used / limit
            best = max(best, share)
    return best


def _quota_day(pool: Pool, rule: Rule, filters: dict[str, str], now: float, known: Callable[[str], bool]) -> Values:
    values: Values = {}
    for scope, model in pool.tracker.scopes():
        if filters.get("project", scope) != scope or filters.get("model", model) != model or not known(model):
            continue
        usage = pool.tracker.usage(scope, model, now)
        limit, used = usage["rpd_limit"], usage["rpd_used"]
        if not limit or used is None:
            continue
        pct = 100.0 * float(used) / float(limit)
        labels = _labels(rule.group_by, {"project": scope, "model": model}.get(rule.group_by, ""))
        values[labels] = max(pct, values.get(labels) or 0.0)
    if not rule.group_by and () not in values:
        values[()] = 0.0
    return values


def _exhaustion(
    pool: Pool, rule: Rule, filters: dict[str, str], rate: QuotaRate | None, now: float, known: Callable[[str], bool]
) -> Values:
    """Per (scope, model) with a daily limit: minutes between the projected exhaustion and the next Pacific reset,
    the same projection as the Forecast page (`forecast.exhaustion.project_exhaustion`)."""
    reset = next_pacific_midnight(now)
    values: Values = {}
    for scope, model in pool.tracker.scopes():
        if filters.get("project", scope) != scope or filters.get("model", model) != model or not known(model):
            continue
        usage = pool.tracker.usage(scope, model, now)
        limit = usage["rpd_limit"]
        if not limit:
            continue
        per_min = rate(scope, model) if rate is not None else 0.0
        at = project_exhaustion(int(usage["rpd_used"] or 0), int(limit), per_min, now, reset)
        minutes = 0.0 if at is None else (reset - at) / 60.0
        labels = _labels(rule.group_by, {"project": scope, "model": model}.get(rule.group_by, ""))
        values[labels] = max(minutes, values.get(labels) or 0.0)
    if not rule.group_by and () not in values:
        values[()] = 0.0
    return values


def _capacity(pool: Pool, rule: Rule, filters: dict[str, str], demand: dict[str, float], now: float) -> Values:
    """Per model: Σ rpm of scopes with a usable key ÷ calls per minute recently, in %. Unknown limits → no value."""
    scopes = {k.scope for k in list(pool.keys.values()) if k.status == "active"}
    values: Values = {}
    for model, per_min in demand.items():
        if "model" in filters and filters["model"] != model:
            continue
        if per_min <= 0:
            continue
        capacity = 0.0
        known = True
        for scope in scopes:
            if pool.tracker.headroom(scope, model, now) <= 0.0:
                continue
            rpm = pool.tracker.limits(scope, model).rpm
            if rpm is None:
                known = False
                break
            capacity += rpm
        value = 100.0 * capacity / per_min if known else None
        labels = _labels(rule.group_by, model)
        if rule.group_by:
            values[labels] = value
        elif value is not None:
            values[()] = min(value, values.get(()) or value)
    return values
