"""Trends: calls, success rate, latency and tokens over time; breakdowns; top keys and models."""

from datetime import timedelta

import streamlit as st

from dashboard import charts, trends_data, ui
from dashboard.i18n import t

ui.require_login()

ui.page_header("trends.title")
c1, c2, c3 = st.columns([2, 2, 2], vertical_alignment="bottom")
granularity = (
    c1.segmented_control(
        t("trends.granularity"),
        trends_data.GRANULARITIES,
        format_func=lambda g: t(f"gran.{g}"),
        default="hour",
        key="granularity",
    )
    or "hour"
)
today = ui.today()
picked = c2.date_input(
    t("common.date_range"),
    value=(today - timedelta(days=6), today),
    key="trends_range",
    max_value=today,
    format="YYYY-MM-DD",
)
start, end = ui.date_range(picked, (today - timedelta(days=6), today))
dim = c3.selectbox(t("trends.breakdown"), trends_data.DIMENSIONS, format_func=lambda d: t(f"dim.{d}"), key="breakdown")

start, note = trends_data.clamp(granularity, start, end)
if note:
    st.info(note)
lo, hi = ui.day_range_utc(start, end)
tz = ui.tz_name()
series = trends_data.series(granularity, lo, hi, "none")
if series is not None and series.empty:
    st.info(t("trends.no_data"))
elif series is not None:
    left, right = st.columns(2)
    left.plotly_chart(charts.calls(series, tz), key="chart_calls")
    right.plotly_chart(charts.success_rate(series, tz), key="chart_rate")
    left, right = st.columns(2)
    left.plotly_chart(charts.latency(series, tz), key="chart_latency")
    right.plotly_chart(charts.tokens(series, tz), key="chart_tokens")

    if dim != "none":
        grouped = trends_data.series(granularity, lo, hi, dim)
        if grouped is not None and not grouped.empty:
            left, right = st.columns(2)
            left.plotly_chart(charts.breakdown(grouped, "calls", dim, tz), key="chart_by_calls")
            right.plotly_chart(charts.breakdown(grouped, "total_tokens", dim, tz), key="chart_by_tokens")

    left, right = st.columns(2)
    for col, which in ((left, "key"), (right, "model")):
        col.subheader(t(f"trends.top_{which}s"))
        top = ui.safe("top", which, lo, hi, 10)
        if top is not None:
            col.dataframe(
                trends_data.top_frame(top), hide_index=True, width="stretch", column_config=trends_data.top_columns()
            )
