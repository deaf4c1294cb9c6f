"""Explore page logic (no Streamlit here): the view state and its URL form, the API request, pivots, charts.

The view state lives in the page URL (`st.query_params`): a link reproduces the view. Keys: `m` measure, `r` rows
dimension, `c` columns dimension, `v` view, `from` / `to` (dates), `cmp` (1 = compare), `top`, and `f.<dim>` =
comma-separated filter values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from dashboard.logic import charts
from dashboard.logic.i18n import label_of, t

MEASURES = [
    "calls",
    "successes",
    "success_rate",
    "error_rate",
    "exhausted",
    "attempts_per_call",
    "upstream_429s",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "p95_ttfb_ms",
    "prompt_tokens",
    "output_tokens",
    "thinking_tokens",
    "cached_tokens",
    "total_tokens",
    "tokens_per_call",
    "request_bytes",
    "response_bytes",
    "cost_usd",
    "list_cost_usd",
]
DIMENSIONS = [
    "model",
    "project",
    "key",
    "client",
    "surface",
    "operation",
    "stream",
    "outcome",
    "status",
    "resource",
    "tier",
    "hour_of_day",
    "day_of_week",
    "hour",
    "day",
    "week",
    "month",
]
TIME_DIMS = ("hour", "day", "week", "month")
VIEWS = ["pivot", "heatmap", "multiples", "share"]
RATES = ("success_rate", "error_rate")
OTHER = "(other)"
NONE = "∅"  # how a NULL dimension value is shown and written in the URL


@dataclass
class View:
    measure: str = "calls"
    rows: str = "model"
    cols: str | None = None
    view: str = "pivot"
    start: date | None = None
    end: date | None = None
    compare: bool = False
    top_n: int = 10
    filters: dict[str, list[str]] = field(default_factory=dict)

    def range(self, today: date) -> tuple[date, date]:
        end = self.end or today
        return self.start or end - timedelta(days=6), end


def from_params(params: Mapping[str, str]) -> View:
    """The view a URL describes; anything unknown or malformed falls back to the default."""
    v = View()
    if params.get("m") in MEASURES:
        v.measure = params["m"]
    if params.get("r") in DIMENSIONS:
        v.rows = params["r"]
    if params.get("c") in DIMENSIONS and params.get("c") != v.rows:
        v.cols = params["c"]
    if params.get("v") in VIEWS:
        v.view = params["v"]
    for name in ("from", "to"):
        try:
            day = date.fromisoformat(params.get(name, ""))
        except ValueError:
            continue
        if name == "from":
            v.start = day
        else:
            v.end = day
    if v.start and v.end and v.start > v.end:
        v.start, v.end = v.end, v.start
    v.compare = params.get("cmp") == "1"
    top = params.get("top", "")
    if top.isdigit() and 1 <= int(top) <= 100:
        v.top_n = int(top)
    for key, value in params.items():
        dim = key.removeprefix("f.")
        if key.startswith("f.") and dim in DIMENSIONS and value:
            v.filters[dim] = [x for x in value.split(",") if x][:200]
    return v


def to_params(v: View) -> dict[str, str]:
    out = {"m": v.measure, "r": v.rows, "v": v.view, "top": str(v.top_n)}
    if v.cols:
        out["c"] = v.cols
    if v.start:
        out["from"] = v.start.isoformat()
    if v.end:
        out["to"] = v.end.isoformat()
    if v.compare:
        out["cmp"] = "1"
    for dim, values in sorted(v.filters.items()):
        if values:
            out[f"f.{dim}"] = ",".join(values)
    return out


def _filter_value(dim: str, value: str) -> Any:
    if value == NONE:
        return None
    if dim in ("hour_of_day", "day_of_week", "status") and value.lstrip("-").isdigit():
        return int(value)
    if dim == "stream":
        return value.lower() == "true"
    return value


def request(v: View, lo: Any, hi: Any, measures: list[str] | None = None) -> dict[str, Any]:
    """The POST /admin/api/explore body for a view (lo/hi: UTC datetimes of the range)."""
    dims = [v.rows] + ([v.cols] if v.cols else [])
    body: dict[str, Any] = {
        "measures": measures or [v.measure],
        "dimensions": dims,
        "top_n": v.top_n,
        "from": lo.isoformat(),
        "to": hi.isoformat(),
    }
    if v.filters:
        body["filters"] = {d: [_filter_value(d, x) for x in vals] for d, vals in v.filters.items()}
    if v.compare:
        body["compare"] = "previous_period"
    return body


def cell_filter(dim: str, value: Any) -> Any:
    """A displayed dimension value back to what the API filters on."""
    if value is None or value == NONE or (isinstance(value, float) and pd.isna(value)):
        return None
    if dim in TIME_DIMS:
        return pd.Timestamp(value).isoformat()
    if dim in ("hour_of_day", "day_of_week", "status"):
        return int(value)
    if dim == "stream":
        return value in (True, "true", "True")
    return str(value)


def tidy(df: pd.DataFrame, v: View) -> pd.DataFrame:
    """API answer → display frame: NULL dimension values shown as ∅, time buckets as local timestamps."""
    out = df.copy()
    for dim in (v.rows, v.cols):
        if not dim or dim not in out:
            continue
        if dim in TIME_DIMS:
            out[dim] = out[dim].map(lambda s: pd.Timestamp(s).tz_localize(None) if s != OTHER else s)
        else:
            out[dim] = out[dim].map(lambda x: NONE if x is None or (isinstance(x, float) and pd.isna(x)) else x)
    return out


def value_label(dim: str, value: Any) -> Any:
    """A dimension value as a reader says it: outcomes and yes/no in the session's language, "(other)" too; every
    other value (models, keys, times, numbers) as it is."""
    if isinstance(value, str) and value == OTHER:
        return t("explore.other")
    if dim in ("outcome", "resource", "tier") and isinstance(value, str) and value != NONE:
        return label_of(dim, value)
    if dim == "stream" and (isinstance(value, bool) or value in ("true", "false", "True", "False")):
        return t("common.yes") if value in (True, "true", "True") else t("common.no")
    return value


def display(df: pd.DataFrame, v: View) -> pd.DataFrame:
    """The tidy frame with its dimension values as shown (value_label); the API's values stay in `df`."""
    out = df.copy()
    for dim in (v.rows, v.cols):
        if dim and dim in out:
            out[dim] = out[dim].map(lambda x, d=dim: value_label(d, x))
    return out


def measure_label(measure: str) -> str:
    return t(f"m.{measure}")


def pivot(df: pd.DataFrame, v: View, column: str | None = None) -> pd.DataFrame:
    """Rows × columns of one measure, with totals where the measure adds up (counts, sums)."""
    column = column or v.measure
    if df.empty:
        return pd.DataFrame()
    if not v.cols:
        table = df.set_index(v.rows)[[column]]
    else:
        table = df.pivot_table(index=v.rows, columns=v.cols, values=column, aggfunc="sum", dropna=False)
        table.columns = [str(c) for c in table.columns]
    if additive(column):
        table.loc["Σ"] = table.sum(numeric_only=True)
        if v.cols:
            table["Σ"] = table.sum(axis=1, numeric_only=True)
    table.index = [str(i) for i in table.index]
    return table


def additive(measure: str) -> bool:
    return not (measure in RATES or measure.endswith(("_ms", "_per_call")))


def heatmap(df: pd.DataFrame, v: View, title: str) -> go.Figure:
    table = pivot(df, v).drop(index="Σ", columns="Σ", errors="ignore")
    fig = go.Figure(
        go.Heatmap(
            z=table.values,
            x=list(table.columns),
            y=list(table.index),
            colorscale="Blues",
            hovertemplate="%{y} · %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(title=title, height=420, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    fig.update_yaxes(autorange="reversed")  # rows top to bottom, as in the pivot table
    return fig


def multiples(df: pd.DataFrame, v: View, time_dim: str, other_dim: str | None, title: str) -> go.Figure:
    """One small chart per value of `other_dim` over `time_dim` (the API already kept the top N + "(other)")."""
    data = df.sort_values(time_dim)
    labels = {time_dim: t(f"dim.{time_dim}"), v.measure: measure_label(v.measure)}
    if other_dim is None:
        return charts.date_ticks(
            px.line(data, x=time_dim, y=v.measure, title=title, markers=True, height=360, labels=labels)
        )
    labels[other_dim] = t(f"dim.{other_dim}")
    n = data[other_dim].nunique()
    fig = px.line(
        data,
        x=time_dim,
        y=v.measure,
        facet_col=other_dim,
        facet_col_wrap=min(4, max(n, 1)),
        markers=True,
        title=title,
        height=220 * max(1, (n + 3) // 4),
        labels=labels,
    )
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=", 1)[-1]))
    return charts.date_ticks(fig)


def share(df: pd.DataFrame, v: View, title: str) -> go.Figure:
    path = [v.rows] + ([v.cols] if v.cols else [])
    data = df[df[v.measure].fillna(0) > 0].copy()
    for col in path:
        data[col] = data[col].astype(str)
    labels = {v.measure: measure_label(v.measure), **{d: t(f"dim.{d}") for d in path}}
    return px.treemap(data, path=path, values=v.measure, title=title, height=460, labels=labels)


def time_dim(v: View) -> tuple[str | None, str | None]:
    """(the time dimension, the other one) when one of rows/columns is a time bucket."""
    for a, b in ((v.rows, v.cols), (v.cols, v.rows)):
        if a in TIME_DIMS:
            return a, b
    return None, None


def delta_table(df: pd.DataFrame, v: View) -> pd.DataFrame:
    """With compare on: per cell the change vs the previous period, absolute and in %."""
    m = v.measure
    data = df.copy()
    prev = data[f"{m}_prev"].astype(float)
    data["Δ%"] = (data[f"{m}_delta"].astype(float) / prev.where(prev != 0)) * 100
    if not v.cols:
        table = data.set_index(v.rows)[[m, f"{m}_prev", f"{m}_delta", "Δ%"]]
        table.columns = [measure_label(m), t("explore.prev"), "Δ", "Δ%"]
    else:
        table = data.pivot_table(index=v.rows, columns=v.cols, values=f"{m}_delta", aggfunc="sum", dropna=False)
        table.columns = [f"Δ {c}" for c in table.columns]
    table.index = [str(i) for i in table.index]
    return table


def _shade(values: pd.Series, delta: bool) -> list[str]:
    """Background colours for one column: blue by size, or red/green by sign for deltas (no matplotlib needed)."""
    nums = pd.to_numeric(values, errors="coerce")
    top = nums.abs().max()
    out = []
    for x in nums:
        if pd.isna(x) or not top:
            out.append("")
        elif delta:
            rgb = "46, 160, 67" if x > 0 else "218, 54, 51"
            out.append(f"background-color: rgba({rgb}, {0.15 + 0.55 * abs(x) / top:.2f})")
        else:
            out.append(f"background-color: rgba(31, 119, 180, {0.08 + 0.6 * abs(x) / top:.2f})")
    return out


def styled(table: pd.DataFrame, measure: str, delta: bool = False) -> Any:
    """The table with conditional colouring over its cells (totals left plain)."""
    if table.empty:
        return table
    body = [c for c in table.columns if c != "Σ"]
    rows = [i for i in table.index if i != "Σ"]
    fmt = "{:,.1%}" if measure in RATES and not delta else "{:,.1f}" if not additive(measure) else "{:,.0f}"
    styler = table.style.apply(lambda col: _shade(col, delta or col.name in ("Δ", "Δ%")), subset=(rows, body))
    formats = {c: ("{:+,.1f}%" if c == "Δ%" else fmt) for c in table.columns}
    return styler.format(formats, na_rep="")


def for_parquet(df: pd.DataFrame) -> pd.DataFrame:
    """Mixed-type object columns (a dimension value next to '(other)' or ∅) written as text."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda x: None if x is None else str(x))
    return out


CALL_COLUMNS = [
    "ts",
    "request_id",
    "client",
    "model",
    "key_id",
    "project",
    "surface",
    "operation",
    "stream",
    "status",
    "outcome",
    "attempts",
    "latency_ms",
    "ttfb_ms",
    "total_tokens",
    "request_bytes",
    "response_bytes",
    "resource_kind",
    "resource_id",
    "error_id",
    "error_message",
]


def calls_frame(items: pd.DataFrame) -> pd.DataFrame:
    out = items[[c for c in CALL_COLUMNS if c in items.columns]].copy()
    for dim in ("outcome", "stream"):
        if dim in out:
            out[dim] = out[dim].map(lambda x, d=dim: value_label(d, x))
    if "resource_kind" in out:
        out["resource_kind"] = out["resource_kind"].map(lambda x: None if x is None else value_label("resource", x))
    if "ts" in out:
        out["ts"] = pd.to_datetime(out["ts"], utc=True, errors="coerce", format="ISO8601")
    return out
