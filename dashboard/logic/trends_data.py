"""Trends page data: series in the display time zone, range limits, top tables."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic import cache, charts, fmt, times
from dashboard.logic.client import AdminClient
from dashboard.logic.i18n import t

GRANULARITIES = ["hour", "day", "week", "month"]
DIMENSIONS = ["model", "key", "project", "status", "client"]
MAX_HOURLY_DAYS = 62  # ~1,500 hourly buckets: still a quick chart


def clamp(granularity: str, start: date, end: date) -> tuple[date, str | None]:
    """Keep hourly charts to a drawable number of buckets."""
    days = (end - start).days + 1
    if granularity == "hour" and days > MAX_HOURLY_DAYS:
        return end - timedelta(days=MAX_HOURLY_DAYS - 1), t("trends.range_too_long", days=days, max=MAX_HOURLY_DAYS)
    return start, None


def prefetch(granularity: str, lo: datetime, hi: datetime, breakdown: str) -> None:
    """Every stats answer the page draws, asked at once (see `cache.prefetch`): the page then waits for the slowest
    one rather than for the five in a row."""
    cache.prefetch(15.0, *page_calls(cache.api(), granularity, lo, hi, breakdown))


def page_calls(
    api: AdminClient, granularity: str, lo: datetime, hi: datetime, breakdown: str
) -> list[tuple[Any, tuple[Any, ...]]]:
    """The admin calls (method, args) a first visit of the page makes."""
    calls: list[tuple[Any, tuple[Any, ...]]] = [
        (api.series, (granularity, lo, hi, "none")),
        (api.outcomes, (granularity, lo, hi)),
        (api.top, ("key", lo, hi, 10)),
        (api.top, ("model", lo, hi, 10)),
    ]
    if breakdown != "client":  # clients come from Explore (`_client_series`), asked when that breakdown is chosen
        calls.append((api.series, (granularity, lo, hi, breakdown)))
    return calls


def series(granularity: str, lo: datetime, hi: datetime, group_by: str) -> pd.DataFrame | None:
    if group_by == "client":  # clients (with their labels) are an Explore dimension, not a stats-rollup one
        return _client_series(granularity, lo, hi)
    df = cache.safe(cache.api().series, ttl=15.0)(granularity, lo, hi, group_by)
    if df is None:
        return None
    if df.empty or "bucket" not in df:
        return df.iloc[0:0]
    df = df.copy()
    df["bucket"] = times.local(df["bucket"])
    if "group" not in df:
        df["group"] = None
    out = df.sort_values("bucket")
    out.attrs = dict(df.attrs)  # `rebuilding` (see rebuilding_note)
    return out


def recent_chart() -> None:
    """Monitor's calls by the hour, yesterday and today. Beyond the glance it gives, it is the landing page's Plotly
    chart: the browser loads and compiles Plotly's JavaScript (the dashboard's largest chunk) while the user reads
    Monitor, not after a click on Trends (bench/dashboard_browser.py times that click)."""
    today = times.today()
    start = today - timedelta(days=1)
    lo, hi = times.day_range_utc(start, today)
    df = series("hour", lo, hi, "none")
    if df is None:
        return
    axis = charts.Axis("hour", start, today, times.tz_name())
    st.plotly_chart(charts.recent_calls(df, axis), key="chart_recent", config=charts.plotly_config())


def spend(df: pd.DataFrame) -> tuple[float, float]:
    """(estimated spend, spend at list price) in USD over the series' buckets."""

    def total(column: str) -> float:
        return float(df[column].fillna(0).sum()) if column in df else 0.0

    return total("cost_usd"), total("list_cost_usd")


def rebuilding_note(*answers: pd.DataFrame | dict[str, Any] | None) -> None:
    """The stats answers were read from the raw rows while the pre-aggregates are rebuilt: say so (as Explore)."""
    shares = [
        a.attrs.get("rebuilding") if isinstance(a, pd.DataFrame) else a.get("rebuilding")
        for a in answers
        if a is not None
    ]
    done = [float(s) for s in shares if s is not None]
    if done:
        st.info(t("stats.rebuilding", pct=f"{100 * min(done):.0f}"), icon=":material/build:")


def _client_series(granularity: str, lo: datetime, hi: datetime) -> pd.DataFrame | None:
    body = {
        "measures": ["calls", "total_tokens"],
        "dimensions": [granularity, "client"],
        "top_n": 12,
        "from": lo.isoformat(),
        "to": hi.isoformat(),
    }
    answer = cache.safe(cache.api().explore, ttl=15.0)(body)
    if answer is None:
        return None
    df = answer[0].rename(columns={granularity: "bucket", "client": "group"})
    if df.empty:
        return df
    df["bucket"] = times.local(pd.to_datetime(df["bucket"], utc=True, format="ISO8601"))
    return df.sort_values("bucket")


def top_frame(df: pd.DataFrame, which: str) -> pd.DataFrame:
    """The API's top rows for the table: a missing key is named for what it was; blank labels stay blank."""
    df = df.copy()
    if "name" in df:
        df["name"] = [fmt.key_name(v) if which == "key" else fmt.text(v) for v in df["name"]]
    for col in ("label", "project"):
        if col in df:
            df[col] = [fmt.text(v) for v in df[col]]
    keep = [
        c
        for c in (
            "name",
            "label",
            "project",
            "calls",
            "successes",
            "failures",
            "success_rate",
            "avg_latency_ms",
            "p95_latency_ms",
            "total_tokens",
        )
        if c in df.columns
    ]
    return df[keep]


def top_columns() -> dict[str, Any]:
    cc = st.column_config
    return {
        "name": cc.TextColumn(t("col.name"), width="medium"),
        "label": cc.TextColumn(t("col.label")),
        "project": cc.TextColumn(t("col.project")),
        "calls": cc.NumberColumn(t("col.calls"), format="localized"),
        "successes": cc.NumberColumn(t("col.successes"), format="localized"),
        "failures": cc.NumberColumn(t("col.failures"), format="localized"),
        "success_rate": cc.NumberColumn(t("col.success_rate"), format="percent"),
        "avg_latency_ms": cc.NumberColumn(t("col.avg_latency"), format="localized"),
        "p95_latency_ms": cc.NumberColumn(t("col.p95_latency"), format="localized"),
        "total_tokens": cc.NumberColumn(t("col.tokens"), format="localized"),
    }
