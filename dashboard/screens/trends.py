"""Trends: calls, success rate, latency, tokens and spend over time; the 429 story; breakdowns; top keys and models."""

from datetime import timedelta

import streamlit as st

from dashboard.logic import cache, charts, dialogs, times, trends_data
from dashboard.logic.i18n import t, wkey

dialogs.page_header("trends.title")
st.session_state.setdefault(wkey("granularity"), "hour")
c1, c2 = st.columns([2, 2], vertical_alignment="bottom")
granularity = (
    c1.segmented_control(
        t("trends.granularity"),
        trends_data.GRANULARITIES,
        format_func=lambda g: t(f"gran.{g}"),
        key=wkey("granularity"),
    )
    or "hour"
)
today = times.today()
picked = c2.date_input(
    t("common.date_range"),
    value=(today - timedelta(days=6), today),
    key="trends_range",
    max_value=today,
    format="YYYY-MM-DD",
)
start, end = times.date_range(picked, (today - timedelta(days=6), today))

start, note = trends_data.clamp(granularity, start, end)
if note:
    st.info(note)
lo, hi = times.day_range_utc(start, end)
axis = charts.Axis(granularity, start, end, times.tz_name())
trends_data.prefetch(granularity, lo, hi, st.session_state.get(wkey("breakdown"), trends_data.DIMENSIONS[0]))
series = trends_data.series(granularity, lo, hi, "none")
trends_data.rebuilding_note(series)
if series is not None and series.empty:
    st.info(t("trends.no_data"))
elif series is not None:
    left, right = st.columns(2)
    left.plotly_chart(charts.calls(series, axis), key="chart_calls", config=charts.plotly_config())
    right.plotly_chart(charts.success_rate(series, axis), key="chart_rate", config=charts.plotly_config())
    left, right = st.columns(2)
    left.plotly_chart(charts.latency(series, axis), key="chart_latency", config=charts.plotly_config())
    right.plotly_chart(charts.tokens(series, axis), key="chart_tokens", config=charts.plotly_config())
    left, right = st.columns(2)
    left.plotly_chart(charts.spend(series, axis), key="chart_spend", config=charts.plotly_config())
    spent, listed = trends_data.spend(series)
    right.metric(
        t("trends.spend_range"),
        f"${spent:,.2f}",
        t("trends.list_spend_range", usd=f"${listed:,.2f}"),
        delta_color="off",
    )
    summary = cache.safe(cache.api().summary, ttl=15.0)()
    if summary and summary.get("spend"):
        outlook = summary["spend"]
        right.caption(
            t(
                "trends.month_end",
                usd=f"${outlook['month_end_cost_usd']:,.2f}",
                list=f"${outlook['month_end_list_cost_usd']:,.2f}",
            )
        )

    st.subheader(t("trends.story_heading"))
    st.caption(t("trends.story_intro"))
    story = cache.safe(cache.api().outcomes, ttl=15.0)(granularity, lo, hi)
    if story is not None:
        story = story.assign(bucket=times.local(story["bucket"]))
        left, right = st.columns(2)
        left.plotly_chart(charts.refusals(story, axis), key="chart_refusals", config=charts.plotly_config())
        right.plotly_chart(
            charts.attempts_per_success(story, axis), key="chart_attempts", config=charts.plotly_config()
        )
        left, right = st.columns(2)
        left.plotly_chart(charts.outcome_breakdown(story, axis), key="chart_outcomes", config=charts.plotly_config())
        right.plotly_chart(charts.status_breakdown(story, axis), key="chart_statuses", config=charts.plotly_config())

    st.subheader(t("trends.breakdown_heading"))
    dim = st.selectbox(
        t("trends.breakdown"), trends_data.DIMENSIONS, format_func=lambda d: t(f"dim.{d}"), key=wkey("breakdown")
    )
    grouped = trends_data.series(granularity, lo, hi, dim)
    if grouped is not None and not grouped.empty:
        left, right = st.columns(2)
        left.plotly_chart(
            charts.breakdown(grouped, "calls", dim, axis), key="chart_by_calls", config=charts.plotly_config()
        )
        right.plotly_chart(
            charts.breakdown(grouped, "total_tokens", dim, axis), key="chart_by_tokens", config=charts.plotly_config()
        )

    left, right = st.columns(2)
    for col, which in ((left, "key"), (right, "model")):
        col.subheader(t(f"trends.top_{which}s"))
        top = cache.safe(cache.api().top, ttl=15.0)(which, lo, hi, 10)
        if top is not None:
            col.dataframe(
                trends_data.top_frame(top, which),
                hide_index=True,
                width="stretch",
                column_config=trends_data.top_columns(),
            )
