"""Plotly figure builders for the Trends page. Input: the admin API's series rows with `bucket` already in the
display time zone. Every title and axis label goes through t()."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from dashboard.i18n import t

SUCCESS = "#2e9e5b"
FAILURE = "#d9534f"
P50 = "#4c78a8"
P95 = "#f58518"
TOKENS = "#7b61ff"
HEIGHT = 320


def _layout(fig: go.Figure, title: str, y_title: str, tz: str, *, stacked: bool = False) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        hovermode="x unified",
        barmode="stack" if stacked else None,
        xaxis_title=t("chart.time", tz=tz),
        yaxis_title=y_title,
    )
    return fig


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df:
        return pd.Series(0.0, index=df.index)
    return pd.to_numeric(df[col], errors="coerce")


def calls(df: pd.DataFrame, tz: str) -> go.Figure:
    """Stacked bars: successful and failed calls per bucket."""
    fig = go.Figure(
        [
            go.Bar(x=df["bucket"], y=_num(df, "successes"), name=t("chart.success"), marker_color=SUCCESS),
            go.Bar(x=df["bucket"], y=_num(df, "failures"), name=t("chart.failure"), marker_color=FAILURE),
        ]
    )
    return _layout(fig, t("chart.calls"), t("chart.count"), tz, stacked=True)


def success_rate(df: pd.DataFrame, tz: str) -> go.Figure:
    rate = _num(df, "success_rate")
    if rate.max(skipna=True) > 1.0:  # the API may answer percent instead of a ratio
        rate = rate / 100.0
    fig = go.Figure(
        go.Scatter(x=df["bucket"], y=rate, name=t("chart.rate"), mode="lines+markers", line={"color": SUCCESS})
    )
    fig = _layout(fig, t("chart.success_rate"), t("chart.rate"), tz)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return fig


def latency(df: pd.DataFrame, tz: str) -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(
                x=df["bucket"],
                y=_num(df, "p50_latency_ms"),
                name=t("chart.p50"),
                mode="lines+markers",
                line={"color": P50},
            ),
            go.Scatter(
                x=df["bucket"],
                y=_num(df, "p95_latency_ms"),
                name=t("chart.p95"),
                mode="lines+markers",
                line={"color": P95},
            ),
        ]
    )
    return _layout(fig, t("chart.latency"), t("chart.ms"), tz)


def tokens(df: pd.DataFrame, tz: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=df["bucket"], y=_num(df, "total_tokens"), name=t("chart.tokens"), marker_color=TOKENS))
    return _layout(fig, t("chart.tokens"), t("chart.token_count"), tz)


def breakdown(df: pd.DataFrame, metric: str, dim: str, tz: str, top: int = 12) -> go.Figure:
    """Stacked bars of `metric` per bucket, one trace per group (the `top` biggest groups, the rest as "…")."""
    data = df.assign(group=df["group"].fillna("–").astype(str), value=_num(df, metric).fillna(0))
    order = data.groupby("group")["value"].sum().sort_values(ascending=False)
    keep = set(order.index[:top])
    data["group"] = data["group"].where(data["group"].isin(keep), "…")
    data = data.groupby(["bucket", "group"], as_index=False)["value"].sum()
    fig = go.Figure()
    for group in [g for g in order.index if g in keep] + (["…"] if len(order) > top else []):
        part = data[data["group"] == group]
        fig.add_trace(go.Bar(x=part["bucket"], y=part["value"], name=group))
    title_key = "chart.calls_by" if metric == "calls" else "chart.tokens_by"
    y_title = t("chart.count") if metric == "calls" else t("chart.token_count")
    return _layout(fig, t(title_key, dim=t(f"dim.{dim}").lower()), y_title, tz, stacked=True)
