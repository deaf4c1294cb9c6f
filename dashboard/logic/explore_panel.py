"""The Explore page's Streamlit parts: controls bound to the URL, the views, drill-down, downloads.

Data shaping and charts live in `explore_view.py` (no Streamlit), so they are tested as plain functions.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic import cache, charts, fmt, paging, sql_tools, times
from dashboard.logic import explore_view as ev
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import choices_placeholder, t, wkey

KEYS = {
    "measure": "ex_m",
    "rows": "ex_r",
    "cols": "ex_c",
    "view": "ex_v",
    "range": "ex_range",
    "compare": "ex_cmp",
    "top_n": "ex_top",
}
FILTER_DIMS = [d for d in ev.DIMENSIONS if d not in ev.TIME_DIMS]


def _k(name: str) -> str:
    """A control's widget key, one per language (`wkey`: formatted options must not outlive a language switch)."""
    return wkey(KEYS[name])


NO_COLS = "-"


def _seed(v: ev.View, today: date) -> None:
    """Widget state from a view (the URL's), so that a shared link opens the same view."""
    st.session_state[_k("measure")] = v.measure
    st.session_state[_k("rows")] = v.rows
    st.session_state[_k("cols")] = v.cols or NO_COLS
    st.session_state[_k("view")] = v.view
    st.session_state[_k("range")] = v.range(today)
    st.session_state[_k("compare")] = v.compare
    st.session_state[_k("top_n")] = v.top_n
    st.session_state["ex_filters"] = {d: list(vals) for d, vals in v.filters.items()}


def controls() -> ev.View:
    today = times.today()
    params = {k: st.query_params[k] for k in st.query_params}
    if params != st.session_state.get("_ex_url") or _k("measure") not in st.session_state:
        _seed(ev.from_params(params), today)
    # Three rows, so that no control is cut at a laptop's width (1400 px with the sidebar open): what to count,
    # how to show it and over which days, then the refinements.
    c1, c2, c3 = st.columns(3, vertical_alignment="bottom")
    measure = c1.selectbox(t("explore.measure"), ev.MEASURES, format_func=lambda m: t(f"m.{m}"), key=_k("measure"))
    rows = c2.selectbox(t("explore.rows"), ev.DIMENSIONS, format_func=lambda d: t(f"dim.{d}"), key=_k("rows"))
    cols = c3.selectbox(
        t("explore.cols"),
        [NO_COLS, *ev.DIMENSIONS],
        key=_k("cols"),
        format_func=lambda d: t("explore.no_cols") if d == NO_COLS else t(f"dim.{d}"),
    )
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    view = (
        c1.segmented_control(t("explore.view"), ev.VIEWS, format_func=lambda v: t(f"explore.view_{v}"), key=_k("view"))
        or "pivot"
    )
    picked = c2.date_input(t("common.date_range"), key=_k("range"), max_value=today, format="YYYY-MM-DD")
    start, end = times.date_range(picked, (today - timedelta(days=6), today))
    c1, c2, c3 = st.columns([1, 2, 2], vertical_alignment="bottom")
    top_n = c1.number_input(t("explore.top_n"), min_value=1, max_value=100, step=1, key=_k("top_n"))
    compare = c2.toggle(t("explore.compare"), key=_k("compare"))
    filters: dict[str, list[str]] = st.session_state.setdefault("ex_filters", {})
    _filter_editor(c3, filters, start, end)
    v = ev.View(
        measure,
        rows,
        None if cols in (NO_COLS, rows) else cols,
        view,
        start,
        end,
        compare,
        int(top_n),
        {d: vals for d, vals in filters.items() if vals},
    )
    url = ev.to_params(v)
    if url != params:
        st.query_params.from_dict(url)
    st.session_state["_ex_url"] = url
    return v


def _filter_editor(where: Any, filters: dict[str, list[str]], start: date, end: date) -> None:
    active = " · ".join(
        f"{t(f'dim.{d}')} = {', '.join(str(ev.value_label(d, x)) for x in vals)}"
        for d, vals in sorted(filters.items())
        if vals
    )
    with where.popover(t("explore.filters_n", n=sum(1 for v in filters.values() if v)), icon=":material/filter_list:"):
        dim = st.selectbox(
            t("explore.filter_dim"), FILTER_DIMS, format_func=lambda d: t(f"dim.{d}"), key=wkey("ex_fdim")
        )
        options = _options(dim, start, end)
        chosen = filters.get(dim, [])
        values = sorted(set(options) | set(chosen))
        picked = st.multiselect(
            t("explore.filter_values"),
            values,
            default=chosen,
            key=f"ex_fval_{dim}",
            format_func=lambda x: str(ev.value_label(dim, x)),
            placeholder=choices_placeholder(values),
            disabled=not values,
        )
        if picked != chosen:
            filters[dim] = picked
            st.rerun()
        if st.button(t("explore.clear_filters"), key="ex_fclear", disabled=not active):
            filters.clear()
            for d in FILTER_DIMS:
                st.session_state.pop(f"ex_fval_{d}", None)
            st.rerun()
    if active:
        st.caption(f":material/filter_list: {active}")


def _options(dim: str, start: date, end: date) -> list[str]:
    if dim == "hour_of_day":
        return [str(h) for h in range(24)]
    if dim == "day_of_week":
        return [str(d) for d in range(1, 8)]
    lo, hi = times.day_range_utc(start, end)
    body = {"measures": ["calls"], "dimensions": [dim], "top_n": 200, "from": lo.isoformat(), "to": hi.isoformat()}
    try:
        df, _ = cache.cached(cache.api().explore, ttl=60.0)(body)
    except AdminError:
        return []
    values = [ev.NONE if v is None else str(v) for v in df[dim]] if dim in df else []
    return [v for v in values if v != ev.OTHER]


def fetch(v: ev.View) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    lo, hi = times.day_range_utc(*v.range(times.today()))
    answer = cache.safe(cache.api().explore, ttl=15.0)(ev.request(v, lo, hi))
    if answer is None:
        return None
    df, meta = answer
    return ev.tidy(df, v), meta


def chart(df: pd.DataFrame, v: ev.View) -> None:
    title = t(f"m.{v.measure}")
    df = ev.display(df, v)
    if v.view == "heatmap":
        if not v.cols:
            st.info(t("explore.need_cols"))
            return
        st.plotly_chart(ev.heatmap(df, v, title), key="ex_heatmap", config=charts.plotly_config())
    elif v.view == "multiples":
        time_dim, other = ev.time_dim(v)
        if time_dim is None:
            st.info(t("explore.need_time"))
            return
        st.plotly_chart(ev.multiples(df, v, time_dim, other, title), key="ex_multiples", config=charts.plotly_config())
    elif v.view == "share":
        st.plotly_chart(ev.share(df, v, title), key="ex_share", config=charts.plotly_config())


def pivot_table(df: pd.DataFrame, v: ev.View) -> dict[str, Any] | None:
    """The pivot (always shown: the numbers behind any chart); returns the clicked cell's dimension values."""
    shown = ev.display(df, v)  # values as read; a click maps its label back to the API's value
    table = ev.pivot(shown, v)
    if not v.cols:
        table = table.rename(columns={v.measure: ev.measure_label(v.measure)})
    labels = {str(s): x for s, x in zip(shown[v.rows], df[v.rows], strict=True)}
    col_labels = {str(s): x for s, x in zip(shown[v.cols], df[v.cols], strict=True)} if v.cols else {}
    st.dataframe(
        ev.styled(table, v.measure), key="ex_pivot", on_select="rerun", selection_mode="single-cell", width="stretch"
    )
    if v.compare:
        st.markdown(f"**{t('explore.delta_title')}**")
        st.dataframe(ev.styled(ev.delta_table(shown, v), v.measure, delta=True), key="ex_delta", width="stretch")
    cells = _selected_cells("ex_pivot")
    if not cells:
        st.caption(t("explore.drill_hint"))
        return None
    row_i, column = cells[0]
    if row_i >= len(table.index):
        return None
    row_label = table.index[row_i]
    if row_label == "Σ" or column == "Σ" or (v.cols and column not in col_labels):
        return None
    cell = {v.rows: ev.cell_filter(v.rows, labels.get(row_label, row_label))}
    if v.cols:
        cell[v.cols] = ev.cell_filter(v.cols, col_labels[column])
    if ev.OTHER in cell.values():
        st.info(t("explore.other_cell"))
        return None
    return cell


def _selected_cells(key: str) -> list[tuple[int, str]]:
    state = st.session_state.get(key)
    try:
        cells = state["selection"]["cells"]  # type: ignore[index]
    except (KeyError, TypeError):
        return []
    return [(int(r), str(c)) for r, c in cells]


def downloads(df: pd.DataFrame) -> None:
    row = st.container(horizontal=True)  # each button as wide as its words
    row.download_button(
        t("common.download_csv"),
        lambda: sql_tools.to_csv(df),
        file_name="keyrack-explore.csv",
        mime="text/csv",
        icon=":material/download:",
        key="ex_csv",
        on_click="ignore",
    )
    row.download_button(
        t("common.download_parquet"),
        lambda: sql_tools.to_parquet(ev.for_parquet(df)),
        file_name="keyrack-explore.parquet",
        mime="application/vnd.apache.parquet",
        icon=":material/download:",
        key="ex_parquet",
        on_click="ignore",
    )


def drill(v: ev.View, cell: dict[str, Any]) -> None:
    lo, hi = times.day_range_utc(*v.range(times.today()))
    body = ev.request(v, lo, hi)
    body = {"from": body["from"], "to": body["to"], "filters": body.get("filters", {}), "cell": cell, "limit": 200}
    found = cache.safe(cache.api().explore_calls, ttl=15.0)(body)
    if found is None:
        return
    what = " · ".join(f"{t(f'dim.{d}')} = {ev.NONE if x is None else ev.value_label(d, x)}" for d, x in cell.items())
    st.subheader(t("explore.drill_title", what=what))
    items = pd.DataFrame(found.get("items", []))
    st.caption(t("explore.drill_count", n=fmt.fmt_int(len(items))))
    if not items.empty:
        shown = ev.calls_frame(items)
        st.dataframe(
            shown,
            key="ex_calls",
            hide_index=True,
            width="stretch",
            on_select="rerun",
            selection_mode="single-row",
            column_config=fmt.column_labels(shown),
        )
        rows = paging.selected_rows("ex_calls")
        if rows and rows[0] < len(items) and items.iloc[rows[0]].get("error_id"):
            entry = cache.safe(cache.api().error)(str(items.iloc[rows[0]]["error_id"]))
            if entry:
                with st.expander(t("explore.error_entry", id=entry.get("id", "")), expanded=True):
                    st.json(entry)
    if st.button(t("explore.open_sql"), icon=":material/database:", key="ex_open_sql"):
        st.session_state["sql_text"] = found.get("sql", "")
        st.switch_page("screens/sql.py")
    with st.expander(t("explore.sql_text")):
        st.code(found.get("sql", ""), language="sql")
