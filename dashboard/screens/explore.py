"""Explore: any measure by up to two dimensions — pivot, heatmap, small multiples, share — with drill-down."""

import streamlit as st

from dashboard.logic import dialogs
from dashboard.logic import explore_panel as xp
from dashboard.logic.i18n import label_of, t

dialogs.page_header("explore.title")
view = xp.controls()
answer = xp.fetch(view)
if answer is not None:
    df, meta = answer
    if meta.get("rebuilding") is not None:  # exact, from the raw rows: slower until the rebuild ends
        st.info(t("explore.rebuilding", pct=f"{100 * float(meta['rebuilding']):.0f}"), icon=":material/build:")
    if df.empty:
        st.info(t("explore.no_data"))
    else:
        xp.chart(df, view)
        cell = xp.pivot_table(df, view)
        xp.downloads(df)
        source = label_of("explore.source", meta.get("source"))
        st.caption(t("explore.footer", source=source, tz=meta.get("timezone", "")))
        if cell is not None:
            xp.drill(view, cell)
