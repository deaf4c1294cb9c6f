"""Figures and tables for the Forecast page (and the Monitor card), from the admin API's forecast answers.

Times arrive as ISO-8601 UTC strings; everything shown is in the display zone (`tz`) and, for the quota day, also in
Pacific time (the zone Google counts the day in).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import plotly.graph_objects as go

from dashboard.logic import charts
from dashboard.logic.i18n import t

PACIFIC = ZoneInfo("America/Los_Angeles")
RUNS_OUT = "#d9534f"
LASTS = "#2e9e5b"
FORECAST = "#4c78a8"
HISTORY = "#555555"
BAND = "rgba(76, 120, 168, 0.22)"
HEIGHT = 340


def parse(ts: str | None, zone: ZoneInfo) -> datetime | None:
    """ISO UTC → naive wall-clock time in `zone`."""
    if not ts:
        return None
    return pd.Timestamp(ts).tz_convert(zone).tz_localize(None).to_pydatetime()


def clock(ts: str | None, zone: ZoneInfo) -> str:
    at = parse(ts, zone)
    return at.strftime("%m-%d %H:%M") if at else "–"


def who(item: dict[str, Any]) -> str:
    return str(item.get("project") or t("forecast.key_scope", key=str(item.get("key_id") or "?")[:12]))


def soonest_text(quota: dict[str, Any], zone: ZoneInfo) -> tuple[str, str]:
    """(value, caption) for the Monitor card: the model that runs out first today, or that none does."""
    soon = quota.get("soonest")
    if not soon:
        return t("forecast.lasts"), t("forecast.card_none")
    return (
        clock(soon["exhausts_at"], zone),
        t("forecast.card_model", model=soon["model"], pt=clock(soon["exhausts_at"], PACIFIC)),
    )


def quota_frame(rows: list[dict[str, Any]], zone: ZoneInfo, pool: bool = False) -> pd.DataFrame:
    out = []
    for r in rows:
        limit = r.get("limit")
        row = {
            t("forecast.col_model"): r["model"],
            t("forecast.col_used"): r["used"],
            t("forecast.col_limit"): f"{limit:,}" if limit is not None else t("forecast.no_limit"),
            t("forecast.col_rate"): r["rate_per_min"],
            t("forecast.col_exhausts"): clock(r["exhausts_at"], zone) if r["exhausts_at"] else t("forecast.lasts"),
            t("forecast.col_exhausts_pt"): clock(r["exhausts_at"], PACIFIC) if r["exhausts_at"] else "–",
            t("forecast.col_rpm_headroom"): (
                f"{r['rpm_headroom']:,}" if r.get("rpm_headroom") is not None else t("forecast.no_limit")
            ),
        }
        if pool:
            row = {**row, t("forecast.col_projects"): r["projects"], t("forecast.col_refused"): r["refused_next_hour"]}
        else:
            row = {
                t("forecast.col_project"): who(r),
                **row,
                t("forecast.col_source"): t(f"forecast.source_{r.get('limit_source') or 'none'}"),
            }
        out.append(row)
    return pd.DataFrame(out)


def timeline(quota: dict[str, Any], zone: ZoneInfo, tz_label: str) -> go.Figure:
    """One bar per (project, model) from now to its projected exhaustion (red) or to the reset (green)."""
    now = parse(quota["now"], zone)
    fig = go.Figure()
    reset = None
    items = sorted(quota.get("items", []), key=lambda i: (i["model"], who(i)))
    for it in items:
        reset = parse(it["resets_at"], zone)
        end = parse(it["exhausts_at"], zone) or reset
        assert now is not None and end is not None
        runs_out = it["exhausts_at"] is not None
        fig.add_trace(
            go.Bar(
                y=[f"{it['model']} · {who(it)}"],
                x=[(end - now).total_seconds() * 1000],
                base=[now],
                orientation="h",
                marker_color=RUNS_OUT if runs_out else LASTS,
                showlegend=False,
                hovertemplate=(
                    f"{it['used']} / {it['limit'] if it['limit'] is not None else t('forecast.no_limit')} · "
                    f"{t('forecast.per_min', n=it['rate_per_min'])}<br>"
                    + (
                        t("forecast.runs_out_at", at=clock(it["exhausts_at"], zone))
                        if runs_out
                        else t("forecast.lasts")
                    )
                    + "<extra></extra>"
                ),
            )
        )
    if reset is not None:
        fig.add_vline(x=reset, line_dash="dash", line_color="#888")
        fig.add_annotation(
            x=reset,
            y=1,
            yref="paper",
            text=t("forecast.reset_line"),
            showarrow=False,
            xanchor="right",
            yanchor="bottom",
        )
    fig.update_layout(
        title={"text": t("forecast.timeline_title"), "x": 0, "xanchor": "left"},
        height=max(220, 60 + 28 * len(items)),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        barmode="overlay",
        xaxis={"type": "date", "title": t("chart.time", tz=tz_label)},
    )
    return charts.date_ticks(fig)


def demand_figure(view: dict[str, Any], zone: ZoneInfo, tz_label: str, title: str) -> go.Figure:
    """History (calls) then the forecast with its 90 % band."""
    hist = view.get("history") or []
    pts = view.get("points") or []
    hx = [parse(h["ts"], zone) for h in hist]
    fx = [parse(p["ts"], zone) for p in pts]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=hx,
            y=[h["calls"] for h in hist],
            mode="lines",
            name=t("forecast.history"),
            line={"color": HISTORY, "width": 1.5},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=fx + fx[::-1],
            y=[p["hi"] for p in pts] + [p["lo"] for p in pts][::-1],
            fill="toself",
            fillcolor=BAND,
            line={"width": 0},
            hoverinfo="skip",
            name=t("forecast.band"),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=fx,
            y=[p["yhat"] for p in pts],
            mode="lines",
            name=t("forecast.forecast"),
            line={"color": FORECAST, "width": 2},
        )
    )
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        hovermode="x unified",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        xaxis_title=t("chart.time", tz=tz_label),
        yaxis_title=t("forecast.calls_axis"),
    )
    return charts.date_ticks(fig)


def backtest_text(view: dict[str, Any]) -> str:
    bt = view.get("backtest") or {}
    held = bt.get("holdout_h") or (bt.get("holdout_days") or 0) * 24
    mape = bt.get("mape")
    return t(
        "forecast.backtest",
        days=round(held / 24),
        mape="–" if mape is None else f"{mape * 100:.1f}",
        cov="–" if bt.get("coverage") is None else f"{bt['coverage'] * 100:.0f}",
        method=view.get("method", ""),
    )


def headroom_frame(plan: dict[str, Any]) -> pd.DataFrame:
    def num(v: Any) -> str:
        return t("forecast.no_limit") if v is None else f"{v:,.0f}"

    rows = []
    for r in plan.get("headroom", []):
        rows.append(
            {
                t("forecast.col_dim"): r["dim"].upper(),
                t("forecast.col_target"): num(r["target"]) if r["target"] else "–",
                t("forecast.col_cap_before"): num(r["capacity_before"]),
                t("forecast.col_cap_after"): num(r["capacity_after"]),
                t("forecast.col_room_before"): num(r["headroom_before"]) if r["target"] else "–",
                t("forecast.col_room_after"): num(r["headroom_after"]) if r["target"] else "–",
            }
        )
    return pd.DataFrame(rows)


_NOTES = [  # the planner's notes (the proxy's fixed English sentences) and what varies in them
    (
        r"^(?P<model>\S+) has a limit of 0 in this pool: no number of projects serves it \(no quota on this tier\)$",
        "forecast.note.zero_limit",
    ),
    (
        r"^project (?P<project>.+) has (?P<n>\d+) keys sharing one quota: (?P<extra>\d+) of them add no capacity$",
        "forecast.note.shared_keys",
    ),
    (r"^(?P<n>\d+) key\(s\) have no project set; each is counted as its own project", "forecast.note.no_project"),
    (r"^no per-day limit is known for this model", "forecast.note.no_rpd"),
    (r"^target rpm = the forecast's busiest hour / 60", "forecast.note.peak_rpm"),
]


def plan_note(note: str) -> str:
    """A planner note in the session's language when it is one the proxy writes; else as it came."""
    for pattern, key in _NOTES:
        if m := re.match(pattern, note):
            return t(key, **m.groupdict())
    return note


def pending_text(view: dict[str, Any]) -> str:
    """Why "Demand ahead" has no chart yet (the admin API's `reason`), in the reader's language."""
    reason = view.get("reason")
    if reason == "rollup":
        progress = view.get("progress")
        done = t("forecast.pending_done", pct=f"{progress * 100:.0f}") if isinstance(progress, int | float) else ""
        return t("forecast.pending_rollup", done=done)
    if reason == "failed":
        minutes = round(float(view.get("refresh_s") or 900) / 60)
        return t("forecast.pending_failed", error=str(view.get("error") or "?")[:200], minutes=minutes)
    if reason == "fitting":
        return t("forecast.pending_fitting")
    return t("forecast.pending")


def models_of(quota: dict[str, Any]) -> list[str]:
    return sorted({p["model"] for p in quota.get("pool", [])})


def soonest_card() -> None:
    """The Monitor page's card: the soonest projected exhaustion today (details on the Forecast page)."""
    import streamlit as st

    from dashboard.logic import cache, times
    from dashboard.logic.client import AdminError

    try:
        quota = cache.cached(cache.api().forecast_quota, ttl=5.0)()
    except AdminError:
        return  # the Monitor page stays useful without it (e.g. a proxy without forecasts)
    value, caption = soonest_text(quota, times.tz())
    st.metric(t("forecast.card_title"), value, border=True, help=caption)
    st.caption(caption)
