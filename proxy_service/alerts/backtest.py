"""Backtest: how a rule would have behaved over the last 7 days, from the 15-minute pre-aggregates only.

Each 15-minute bucket gives one value of the metric (counts are scaled to the rule's window); consecutive breached
buckets form a breach, and a breach that lasts at least `for_s` becomes a would-fire span starting `for_s` after
the breach began. Metrics the pre-aggregates do not hold (key counts, attempts, TTFT, per-class errors) have no history.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import duckdb

from proxy_service.alerts import queries
from proxy_service.alerts.rules import METRICS, Rule
from proxy_service.analytics import preagg_read
from proxy_service.analytics.buckets import floor_time

SPAN = timedelta(days=7)
RESOLUTION_S = 900


def unsupported(rule: Rule) -> str | None:
    if not METRICS[rule.metric].backtest:
        return f"{rule.metric} has no recorded history (it is read live)"
    filters = dict(rule.filters)
    if len(filters) > 1 or set(filters) - {"model", "project"}:
        return "backtests can filter by one model or one project only"
    if rule.metric == "exhausted_rate" and filters:
        return "exhausted_rate history has no model or project split"
    return None


def run(cur: duckdb.DuckDBPyConnection, rule: Rule, now: datetime) -> dict[str, Any]:
    hi = floor_time(now, RESOLUTION_S) + timedelta(seconds=RESOLUTION_S)
    lo = hi - SPAN
    why = unsupported(rule)
    out: dict[str, Any] = {
        "supported": why is None,
        "resolution_s": RESOLUTION_S,
        "from": lo,
        "to": hi,
        "threshold": rule.threshold,
        "op": rule.op,
        "series": [],
        "spans": [],
    }
    if why:
        return {**out, "reason": why}
    dim, val = next(iter(dict(rule.filters).items()), ("all", ""))
    series = _series(cur, rule, dim, val, lo, hi)
    spans = _spans(rule, series)
    return {
        **out,
        "series": [{"t": t, "value": v} for t, v in series],
        "spans": [{"start": a, "end": b} for a, b in spans],
        "fired": len(spans),
        "firing_s": sum((b - a).total_seconds() for a, b in spans),
    }


def _series(
    cur: duckdb.DuckDBPyConnection, rule: Rule, dim: str, val: str, lo: datetime, hi: datetime
) -> list[tuple[datetime, float | None]]:
    m = rule.metric
    if m == "p95_latency_ms":
        return preagg_read.backtest_p95(cur, dim, val, lo, hi)
    counters = preagg_read.backtest_counters(cur, dim, val, lo, hi)
    if m == "calls":
        scale = rule.window_s / RESOLUTION_S
        by_bucket = {b: calls * scale for b, calls, _ in counters}
        return _dense(lo, hi, by_bucket, 0.0)
    if m in ("success_rate", "error_rate"):
        return [(b, (s / c if m == "success_rate" else (c - s) / c) if c else None) for b, c, s in counters]
    if m == "exhausted_rate":
        refused = preagg_read.backtest_exhausted(cur, lo, hi)
        return [(b, refused.get(b, 0) / c if c else None) for b, c, _ in counters]
    if m == "calls_vs_last_week":
        earlier = preagg_read.backtest_counters(cur, dim, val, lo - queries.WEEK, hi - queries.WEEK)
        before = {b + queries.WEEK: c for b, c, _ in earlier}
        now_calls = {b: c for b, c, _ in counters}
        return [(b, (now_calls.get(b, 0) / before[b]) if before.get(b) else None) for b, _v in _dense(lo, hi, {}, 0.0)]
    raise ValueError(m)


def _dense(
    lo: datetime, hi: datetime, values: dict[datetime, float], fill: float
) -> list[tuple[datetime, float | None]]:
    out: list[tuple[datetime, float | None]] = []
    t = lo
    while t < hi:
        out.append((t, values.get(t, fill)))
        t += timedelta(seconds=RESOLUTION_S)
    return out


def _spans(rule: Rule, series: list[tuple[datetime, float | None]]) -> list[tuple[datetime, datetime]]:
    """Runs of consecutive breached buckets; each run longer than `for_s` fires from start + for_s to its end."""
    step, hold = timedelta(seconds=RESOLUTION_S), timedelta(seconds=rule.for_s)
    runs: list[tuple[datetime, datetime]] = []
    for t, v in series:
        if not rule.breached(v):
            continue
        if runs and runs[-1][1] == t:
            runs[-1] = (runs[-1][0], t + step)
        else:
            runs.append((t, t + step))
    return [(a + hold, b) for a, b in runs if a + hold < b]
