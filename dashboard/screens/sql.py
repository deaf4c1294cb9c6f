"""SQL: one read-only query over the call events, through the proxy's admin API."""

import time

import streamlit as st

from dashboard.logic import cache, dialogs, fmt, sql_tools, tables
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import t, wkey

EXAMPLES = dict(sql_tools.EXAMPLES)
st.session_state.setdefault("sql_text", sql_tools.EXAMPLES[0][1])


def _use_example() -> None:
    chosen = st.session_state.get(wkey("sql_example"))
    if chosen in EXAMPLES:
        st.session_state["sql_text"] = EXAMPLES[chosen]


dialogs.page_header("sql.title")
st.caption(t("sql.intro"))
editor, schema = st.columns([3, 1])
with editor:
    st.selectbox(
        t("sql.examples"),
        ["", *EXAMPLES],
        key=wkey("sql_example"),
        on_change=_use_example,
        format_func=lambda k: t(k) if k else t("sql.pick_example"),
    )
    sql = st.text_area(t("sql.editor"), key="sql_text", height=220)
    run = st.button(t("sql.run"), type="primary", icon=":material/play_arrow:", key="sql_run")
with schema:
    st.markdown(f"**{t('sql.schema')}**")
    for table, columns in (cache.safe(cache.api().schema, ttl=300.0)() or {}).items():
        with st.expander(f"{table} ({len(columns)})"):
            st.markdown("\n".join(f"- `{c.get('name')}` {c.get('type', '')}" for c in columns))

if run:
    st.session_state.pop("sql_result", None)
    st.session_state.pop("sql_error", None)
    if not sql.strip():
        st.session_state["sql_error"] = AdminError("invalid", "", reason="sql_empty")
    else:
        started = time.perf_counter()
        try:
            result = cache.api().query(sql)
            st.session_state["sql_result"] = (result, (time.perf_counter() - started) * 1000)
        except AdminError as exc:  # kept as the error, drawn in the language of each run
            st.session_state["sql_error"] = exc

if st.session_state.get("sql_error"):
    st.error(fmt.sql_error_text(st.session_state["sql_error"]), icon=":material/error:")
if st.session_state.get("sql_result"):
    result, ms = st.session_state["sql_result"]
    st.caption(t("sql.rows", n=fmt.fmt_int(len(result.frame)), ms=f"{result.elapsed_ms or ms:,.0f}"))
    if result.truncated:
        st.warning(t("sql.truncated"))
    shown = sql_tools.displayable(result.frame)
    st.dataframe(shown, hide_index=True, width="stretch", key="sql_table")
    tables.scroll_hint(shown)
    c1, c2, _ = st.columns([1, 1, 4])
    c1.download_button(
        t("common.download_csv"),
        lambda: sql_tools.to_csv(result.frame),
        file_name="keyrack-query.csv",
        mime="text/csv",
        icon=":material/download:",
        key="sql_csv",
        on_click="ignore",
    )
    c2.download_button(
        t("common.download_parquet"),
        lambda: sql_tools.to_parquet(result.frame),
        file_name="keyrack-query.parquet",
        mime="application/vnd.apache.parquet",
        icon=":material/download:",
        key="sql_parquet",
        on_click="ignore",
    )
