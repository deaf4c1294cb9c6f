"""Monitor's clients panel: the busiest clients now, their use against their limits and the limit each reaches
first at its pace (the Clients page has every record and the actions)."""

from __future__ import annotations

import streamlit as st

from dashboard.logic import cache
from dashboard.logic import tenants_view as tv
from dashboard.logic.i18n import t


def panel(ttl: float) -> None:
    items = cache.safe(cache.api().clients, ttl=ttl)()
    if not items or not tv.records(items):
        return  # open mode, or no record: nothing to show per client
    st.subheader(t("clients.monitor_title"))
    df = tv.busiest(items, label=lambda name: t(f"clients.limit.{name}"))
    if df.empty:
        st.caption(t("clients.monitor_none"))
        return
    df["class"] = df["class"].map(lambda c: t(f"clients.class.{c}") if c else "")
    labels = {c: t(f"clients.col.{c}") for c in df.columns}
    st.dataframe(df, hide_index=True, width="stretch", key="tbl_clients_now", column_config=labels)
