"""Error logs: filter, page through, inspect, delete, export."""

from datetime import datetime, timedelta

import streamlit as st

from dashboard.logic import cache, dialogs, fmt, paging, tables, times
from dashboard.logic import errors_panel as ep
from dashboard.logic.i18n import t

dialogs.page_header("errors.title")
flt = ep.filters()
total_page = cache.safe(cache.api().errors)(page_size=1, **ep.query_args(flt))
total = total_page.total if total_page else 0
st.caption(t("errors.count", total=fmt.fmt_int(total)))
page, size = paging.pager("errors", total)
result = cache.safe(cache.api().errors)(page=page, page_size=size, **ep.query_args(flt))
items = result.items if result is not None else None

if items is not None and not items.empty:
    frame, config = ep.table_frame(items), ep.column_config()
    st.dataframe(
        frame,
        key="tbl_errors",
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=config,
        width="stretch",
    )
    tables.scroll_hint(frame, config)
    rows = [r for r in paging.selected_rows("tbl_errors") if r < len(items)]
    ids = [str(items.iloc[r]["id"]) for r in rows]
    c1, c2, c3, _ = st.columns(4)
    if c1.button(t("errors.details"), icon=":material/info:", key="err_details", disabled=len(ids) != 1):
        dialogs.open_dialog("error_detail", id=ids[0])
        st.rerun()
    if c2.button(
        t("errors.delete_selected", n=len(ids)), icon=":material/delete:", key="err_delete_selected", disabled=not ids
    ):
        dialogs.ask_confirm("delete", t("errors.confirm_selected", n=len(ids)), ids=ids)
        st.rerun()
    c3.download_button(
        t("common.download_csv"),
        ep.csv_maker(cache.api(), flt),
        file_name="keyrack-errors.csv",
        mime="text/csv",
        icon=":material/download:",
        key="err_csv",
        on_click="ignore",
    )
elif items is not None:
    st.info(t("common.none"))

# The bulk deletes live apart from reading and exporting, each behind a confirmation.
with st.expander(t("errors.delete_heading")):
    st.caption(t("errors.delete_caption"))
    if st.button(
        t("errors.delete_matching", n=fmt.fmt_int(total)),
        icon=":material/delete_sweep:",
        key="err_delete_matching",
        disabled=not total,
    ):
        dialogs.ask_confirm("delete", t("errors.confirm_matching", n=fmt.fmt_int(total)), filter=flt)
        st.rerun()
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    older = c1.date_input(t("errors.older_than"), value=times.today() - timedelta(days=30), key="err_older")
    if c2.button(t("errors.delete_older"), icon=":material/auto_delete:", key="err_delete_older"):
        cutoff = datetime.combine(older, datetime.min.time(), times.tz())
        dialogs.ask_confirm("delete", t("errors.confirm_older", date=older.isoformat()), older_than=cutoff)
        st.rerun()

dialogs.show_dialog(
    {
        "error_detail": ("errors.detail_title", ep.detail_dialog, "large"),
        "confirm": ("common.confirm_title", dialogs.confirm_body({"delete": ep.delete_errors}), "small"),
    }
)
