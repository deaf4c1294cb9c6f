"""Plotly figure builders for the Trends page. Input: the admin API's series rows with `bucket` already in the
display time zone, and the chosen range as an `Axis`. Every title, axis label and tick label goes through t().

Two rules every chart follows:
- the x axis spans the chosen range with ticks on whole buckets, labelled in the session's language (one bucket
  of data is one bar in a week, not a zoom into fractions of a millisecond);
- a group (model, key, project, status, outcome) has one colour everywhere: `colour(name)` hashes the name into a
  fixed palette, so "gemini-2.5-flash" is the same colour on every chart of every page.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pandas as pd
import plotly.graph_objects as go

from dashboard.logic.i18n import current, label_of, t

SUCCESS = "#2e9e5b"
FAILURE = "#d9534f"
P50 = "#4c78a8"
P95 = "#f58518"
TOKENS = "#7b61ff"
SPEND = "#e45756"
LIST_SPEND = "#b0b0b0"
OTHERS = "#b0b0b0"
HEIGHT = 320
SMALL_HEIGHT = 200
MAX_TICKS = 12
# Tableau-like qualitative palette without the success green / failure red / grey used above.
PALETTE = (
    "#4c78a8",
    "#f58518",
    "#72b7b2",
    "#b279a2",
    "#ff9da6",
    "#9d755d",
    "#eeca3b",
    "#54a24b",
    "#439894",
    "#83bcb6",
    "#e45756",
    "#bab0ac",
    "#d67195",
    "#fcbfd2",
    "#8f6d31",
    "#1f77b4",
    "#9467bd",
    "#17becf",
    "#7f7f7f",
)
# The built-in models (quota.DEFAULT_LIMITS) each get a colour of their own, far apart, so two of them never share a
# hash bucket or look alike; other names hash into the rest of the palette.
MODEL_COLOURS = {
    "gemini-2.5-flash": "#1f77b4",
    "gemini-2.5-flash-lite": "#54a24b",
    "gemini-2.5-pro": "#e45756",
    "gemini-2.0-flash": "#eeca3b",
    "gemini-2.0-flash-lite": "#83bcb6",
    "gemini-embedding-001": "#fcbfd2",
}
HASHED = tuple(c for c in PALETTE if c not in MODEL_COLOURS.values())
BUCKET = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}
FREQ = {"hour": "h", "day": "D", "week": "W-MON", "month": "MS"}
MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def colour(name: object) -> str:
    """The one colour of a group, the same on every chart and page: a built-in model's own, else CRC32 of the name
    into the rest of PALETTE."""
    if name in (None, "…"):
        return OTHERS
    if str(name) in MODEL_COLOURS:
        return MODEL_COLOURS[str(name)]
    return HASHED[zlib.crc32(str(name).encode()) % len(HASHED)]


@dataclass(frozen=True)
class Axis:
    """The chosen range in display-zone wall-clock time: [start 00:00, end + 1 day 00:00), bucketed."""

    granularity: str
    start: date
    end: date
    tz: str

    @property
    def lo(self) -> datetime:
        return datetime.combine(self.start, time.min)

    @property
    def hi(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min)

    def buckets(self) -> pd.DatetimeIndex:
        """Every bucket start that overlaps the range (the first week/month may start before it)."""
        first = pd.Timestamp(self.lo)
        if self.granularity == "week":
            first -= pd.Timedelta(days=first.weekday())
        elif self.granularity == "month":
            first = first.replace(day=1)
        return pd.date_range(first, pd.Timestamp(self.hi), freq=FREQ[self.granularity], inclusive="left")

    def span(self) -> tuple[datetime, datetime]:
        """The x range: from the first bucket's start to the last one's end (whole buckets, the range inside)."""
        buckets = self.buckets()
        last = buckets[-1] + (pd.DateOffset(months=1) if self.granularity == "month" else BUCKET[self.granularity])
        return buckets[0].to_pydatetime(), max(self.hi, last.to_pydatetime())

    def width_ms(self) -> float:
        """A bar's width: 80 % of its bucket."""
        span = BUCKET.get(self.granularity, timedelta(days=30))
        return span.total_seconds() * 1000 * 0.8


def tick_label(ts: pd.Timestamp, granularity: str, with_date: bool) -> str:
    """A tick's text in the session's language (no browser locale needed)."""
    zh = current() == "zh"
    if granularity == "month":
        return f"{ts.year}年{ts.month}月" if zh else f"{MONTHS_EN[ts.month - 1]} {ts.year}"
    day = f"{ts.month}月{ts.day}日" if zh else f"{MONTHS_EN[ts.month - 1]} {ts.day}"
    if granularity == "hour":
        clock = f"{ts.hour:02d}:00"
        return f"{clock}<br>{day}" if with_date else clock
    return day


DAY_MS = 86_400_000
# Plotly's own words (the chart toolbar's tooltips, its date names) in Chinese: a locale passed in each chart's config.
PLOTLY_ZH = {
    "dictionary": {
        "Autoscale": "自动缩放",
        "Box Select": "框选",
        "Click to enter Colorscale title": "点击输入色阶标题",
        "Compare data on hover": "悬停时比较数据",
        "Double-click to zoom back out": "双击以还原缩放",
        "Download plot": "下载图表",
        "Download plot as a png": "下载图表为 PNG",
        "Lasso Select": "套索选择",
        "Orbital rotation": "轨道旋转",
        "Pan": "平移",
        "Produced with Plotly.js": "由 Plotly.js 生成",
        "Reset": "重置",
        "Reset axes": "重置坐标轴",
        "Reset view": "重置视图",
        "Show closest data on hover": "悬停时显示最近的数据",
        "Snapshot succeeded": "截图成功",
        "Taking snapshot - this may take a few seconds": "正在截图，可能需要几秒钟",
        "Toggle Spike Lines": "切换辅助线",
        "Toggle show closest data on hover": "切换悬停时显示最近的数据",
        "Zoom": "缩放",
        "Zoom in": "放大",
        "Zoom out": "缩小",
        "close:": "收盘：",
        "high:": "最高：",
        "low:": "最低：",
        "open:": "开盘：",
        "trace": "序列",
    },
    "format": {
        "days": ["星期日", "星期一", "星期二", "星期三", "星期四", "星期五", "星期六"],
        "shortDays": ["周日", "周一", "周二", "周三", "周四", "周五", "周六"],
        "months": [f"{m}月" for m in range(1, 13)],
        "shortMonths": [f"{m}月" for m in range(1, 13)],
        "date": "%Y-%m-%d",
    },
}


def plotly_config() -> dict[str, object]:
    """A chart's Plotly config: its own words (toolbar tooltips, date names) in the session's language."""
    if current() == "zh":
        return {"locale": "zh-CN", "locales": {"zh-CN": PLOTLY_ZH}}
    return {}


def date_formats() -> dict[str, str]:
    """The session language's date style, for Plotly's own date ticks (d3 formats) as tick_label writes Trends'."""
    if current() == "zh":
        return {"day": "%-m月%-d日", "month": "%Y年%-m月"}
    return {"day": "%b %-d", "month": "%b %Y"}


def date_ticks(fig: go.Figure) -> go.Figure:
    """Date x axes that Plotly ticks by itself (Forecast, Alerts, Explore) in the same style as Trends' ticks:
    "13:00 / Dec 1" or "13:00 / 12月1日", "Dec 1" or "12月1日", "Dec 2026" or "2026年12月"; never "Dec 1, 2026"."""
    f = date_formats()
    stops = [
        {"dtickrange": [None, DAY_MS], "value": f"%H:%M<br>{f['day']}"},
        {"dtickrange": [DAY_MS, "M1"], "value": f["day"]},
        {"dtickrange": ["M1", None], "value": f["month"]},
    ]
    fig.update_xaxes(tickformatstops=stops, hoverformat="%Y-%m-%d %H:%M")
    return fig


def _x_axis(fig: go.Figure, axis: Axis) -> None:
    buckets = axis.buckets()
    step = max(1, -(-len(buckets) // MAX_TICKS))
    if axis.granularity == "hour" and step < 24:  # keep hourly ticks on round hours (every 1, 2, 3, 4, 6, 12 h)
        step = next(s for s in (1, 2, 3, 4, 6, 12, 24) if s >= step)
    ticks = list(buckets[::step])
    labels = [tick_label(ts, axis.granularity, i == 0 or ts.hour < step) for i, ts in enumerate(ticks)]
    fig.update_xaxes(
        type="date",
        range=list(axis.span()),
        tickmode="array",
        tickvals=ticks,
        ticktext=labels,
        hoverformat="%Y-%m-%d %H:%M",
        showgrid=True,
    )


def _layout(fig: go.Figure, title: str, y_title: str, axis: Axis, *, stacked: bool = False) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0, "xanchor": "left"},
        height=HEIGHT,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1},
        hovermode="x unified",
        barmode="stack" if stacked else None,
        xaxis_title=t("chart.time", tz=axis.tz),
        yaxis_title=y_title,
        separators=".,",
    )
    _x_axis(fig, axis)
    fig.update_yaxes(rangemode="tozero", tickformat=",~r")
    return fig


def _num(df: pd.DataFrame, col: str) -> pd.Series:
    if col not in df:
        return pd.Series(0.0, index=df.index)
    return pd.to_numeric(df[col], errors="coerce")


COUNTS = ("calls", "successes", "failures", "total_tokens", "prompt_tokens", "output_tokens")


def complete(df: pd.DataFrame, axis: Axis) -> pd.DataFrame:
    """One row per bucket of the range: missing buckets count zero calls; rates and latencies stay gaps."""
    full = pd.DataFrame({"bucket": axis.buckets()})
    out = full.merge(df, on="bucket", how="left")
    for col in COUNTS:
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").fillna(0)
    return out


def _bar(x: pd.Series, y: pd.Series, name: str, colour_: str, axis: Axis) -> go.Bar:
    # offset=0: the bar starts at its bucket's start and covers 80 % of the bucket, as the axis ticks suggest.
    return go.Bar(x=x, y=y, name=name, marker_color=colour_, width=axis.width_ms(), offset=0)


def calls(df: pd.DataFrame, axis: Axis) -> go.Figure:
    """Stacked bars: successful and failed calls per bucket."""
    df = complete(df, axis)
    fig = go.Figure(
        [
            _bar(df["bucket"], _num(df, "successes"), t("chart.success"), SUCCESS, axis),
            _bar(df["bucket"], _num(df, "failures"), t("chart.failure"), FAILURE, axis),
        ]
    )
    return _layout(fig, t("chart.calls"), t("chart.count"), axis, stacked=True)


def recent_calls(df: pd.DataFrame, axis: Axis) -> go.Figure:
    """Monitor's small chart: the calls bars of Trends, yesterday and today by the hour, without a legend (green and
    red say success and failure; the hover says it in words)."""
    fig = calls(df, axis)
    fig.update_layout(
        title={"text": t("monitor.recent_calls")}, height=SMALL_HEIGHT, showlegend=False, xaxis_title=None
    )
    return fig


def success_rate(df: pd.DataFrame, axis: Axis) -> go.Figure:
    df = complete(df, axis)
    fig = go.Figure(
        go.Scatter(
            x=df["bucket"],
            y=_num(df, "success_rate"),
            name=t("chart.rate"),
            mode="lines+markers",
            line={"color": SUCCESS},
        )
    )
    fig = _layout(fig, t("chart.success_rate"), t("chart.rate"), axis)
    fig.update_yaxes(tickformat=".0%", range=[0, 1.05])
    return fig


def latency(df: pd.DataFrame, axis: Axis) -> go.Figure:
    df = complete(df, axis)
    fig = go.Figure(
        [
            go.Scatter(
                x=df["bucket"],
                y=_num(df, "p50_latency_ms").round(),
                name=t("chart.p50"),
                mode="lines+markers",
                line={"color": P50},
            ),
            go.Scatter(
                x=df["bucket"],
                y=_num(df, "p95_latency_ms").round(),
                name=t("chart.p95"),
                mode="lines+markers",
                line={"color": P95},
            ),
        ]
    )
    return _layout(fig, t("chart.latency"), t("chart.ms"), axis)


def tokens(df: pd.DataFrame, axis: Axis) -> go.Figure:
    df = complete(df, axis)
    fig = go.Figure(_bar(df["bucket"], _num(df, "total_tokens"), t("chart.tokens"), TOKENS, axis))
    return _layout(fig, t("chart.tokens"), t("chart.token_count"), axis)


def spend(df: pd.DataFrame, axis: Axis) -> go.Figure:
    """Bars of the estimated spend per bucket, and a line of what the same calls cost at list price (the free
    tier's calls cost nothing but count there)."""
    df = complete(df, axis)
    fig = go.Figure(
        [
            _bar(df["bucket"], _num(df, "cost_usd"), t("chart.spend"), SPEND, axis),
            go.Scatter(
                x=df["bucket"],
                y=_num(df, "list_cost_usd"),
                name=t("chart.list_spend"),
                mode="lines+markers",
                line={"color": LIST_SPEND, "dash": "dot"},
            ),
        ]
    )
    fig = _layout(fig, t("chart.spend_title"), t("chart.usd"), axis)
    fig.update_yaxes(tickprefix="$")
    return fig


def group_label(dim: str, value: object) -> str:
    """A group's name on a legend: a missing key is a call that never reached one; blanks are "–"."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return t("common.no_key") if dim == "key" else "–"
    return str(value)


def breakdown(df: pd.DataFrame, metric: str, dim: str, axis: Axis, top: int = 12) -> go.Figure:
    """Stacked bars of `metric` per bucket, one trace per group (the `top` biggest groups, the rest as "…")."""
    data = df.assign(group=[group_label(dim, g) for g in df["group"]], value=_num(df, metric).fillna(0))
    order = data.groupby("group")["value"].sum().sort_values(ascending=False)
    order = order.iloc[sorted(range(len(order)), key=lambda i: (-order.iloc[i], order.index[i]))]
    keep = set(order.index[:top])
    data["group"] = data["group"].where(data["group"].isin(keep), "…")
    data = data.groupby(["bucket", "group"], as_index=False)["value"].sum()
    fig = go.Figure()
    for group in [g for g in order.index if g in keep] + (["…"] if len(order) > top else []):
        part = data[data["group"] == group]
        fig.add_trace(_bar(part["bucket"], part["value"], group, colour(group), axis))
    title_key = "chart.calls_by" if metric == "calls" else "chart.tokens_by"
    y_title = t("chart.count") if metric == "calls" else t("chart.token_count")
    return _layout(fig, t(title_key, dim=t(f"dim.{dim}").lower()), y_title, axis, stacked=True)


# -- the 429 story (GET /stats/outcomes, long form: bucket, group, n) -----------------------------------------------
REFUSED = "#7b61ff"
UPSTREAM_429 = "#f58518"
FIXED = {"success": SUCCESS, "200": SUCCESS, "exhausted": REFUSED, "429": UPSTREAM_429, "upstream_error": FAILURE}


def _wide(df: pd.DataFrame, prefix: str, axis: Axis) -> pd.DataFrame:
    """Rows whose group starts with `prefix` as one column per name, one row per bucket of the range (zeros)."""
    part = df[df["group"].str.startswith(prefix)]
    wide = part.assign(name=part["group"].str.slice(len(prefix))).pivot_table(
        index="bucket", columns="name", values="n", aggfunc="sum", fill_value=0
    )
    full = wide.reindex(axis.buckets(), fill_value=0)
    full.index.name = "bucket"
    return full


def _series(df: pd.DataFrame, group: str, axis: Axis) -> pd.Series:
    part = df[df["group"] == group].groupby("bucket")["n"].sum()
    return part.reindex(axis.buckets(), fill_value=0)


def refusals(df: pd.DataFrame, axis: Axis) -> go.Figure:
    """Google's 429s (upstream attempts answered 429) next to Keyrack's own refusals (calls it answered 429
    without asking Google: every key of the model was cooling or out of a known limit)."""
    up, own = _series(df, "upstream_429", axis), _series(df, "outcome:exhausted", axis)
    fig = go.Figure(
        [
            go.Bar(
                x=up.index,
                y=up.values,
                name=t("chart.upstream_429"),
                marker_color=UPSTREAM_429,
                width=axis.width_ms() / 2,
                offset=0,
            ),
            go.Bar(
                x=own.index,
                y=own.values,
                name=t("chart.refused"),
                marker_color=REFUSED,
                width=axis.width_ms() / 2,
                offset=axis.width_ms() / 2,
            ),
        ]
    )
    return _layout(fig, t("chart.refusals"), t("chart.count"), axis)


def attempts_per_success(df: pd.DataFrame, axis: Axis) -> go.Figure:
    attempts, successes = _series(df, "attempts", axis), _series(df, "outcome:success", axis)
    ratio = (attempts / successes.where(successes > 0)).round(2)
    fig = go.Figure(
        go.Scatter(
            x=ratio.index,
            y=ratio.values,
            name=t("chart.attempts_per_success"),
            mode="lines+markers",
            line={"color": P50},
        )
    )
    fig = _layout(fig, t("chart.attempts_per_success"), t("chart.ratio"), axis)
    fig.update_yaxes(tickformat=",.2~f")
    return fig


def _stacked(wide: pd.DataFrame, title: str, label: Callable[[str], str], axis: Axis) -> go.Figure:
    order = wide.sum().sort_values(ascending=False).index
    fig = go.Figure(
        [
            go.Bar(
                x=wide.index,
                y=wide[name].values,
                name=label(str(name)),
                width=axis.width_ms(),
                offset=0,
                marker_color=FIXED.get(str(name), colour(name)),
            )
            for name in order
        ]
    )
    return _layout(fig, title, t("chart.count"), axis, stacked=True)


def outcome_breakdown(df: pd.DataFrame, axis: Axis) -> go.Figure:
    return _stacked(_wide(df, "outcome:", axis), t("chart.outcomes"), outcome_label, axis)


def status_breakdown(df: pd.DataFrame, axis: Axis) -> go.Figure:
    return _stacked(_wide(df, "status:", axis), t("chart.statuses"), lambda s: s or "–", axis)


def outcome_label(name: str) -> str:
    return label_of("outcome", name)
