"""Config page: client labels — a name for each client id seen (tokens never shown)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.logic import cache, dialogs, fmt
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import t

FIELD = "client_labels"


def frame(items: list[dict]) -> pd.DataFrame:
    """The ids this editor names: tokens of `access_tokens` and ids seen in events (a client made on the Clients
    page has its label there); a token's record without a configured label shows a blank one."""
    cols = ["client_id", "calls_90d", "label"]
    rows = [
        {**i, "label": None if i.get("label") == i.get("client_id") else i.get("label")}
        for i in items
        if i.get("source") != "api"
    ]
    df = pd.DataFrame(rows, columns=cols)
    df["label"] = df["label"].fillna("")
    return df


def labels_of(edited: pd.DataFrame) -> dict[str, str]:
    """The label map an edited table means (blank label: no label)."""
    return {str(r.client_id): str(r.label).strip() for r in edited.itertuples() if str(r.label or "").strip()}


def editor() -> None:
    with st.container(border=True):
        st.subheader(t("config.clients_title"))
        st.caption(t("config.clients_intro"))
        items = cache.safe(cache.api().clients, ttl=30.0)()
        if items is None:
            return
        df = frame(items)
        if df.empty:
            st.info(t("config.clients_none"))
            return
        edited = st.data_editor(
            df,
            key="cfg_clients",
            hide_index=True,
            width="stretch",
            disabled=["client_id", "calls_90d"],
            column_config=fmt.column_labels(df),
        )
        labels = labels_of(edited)
        if st.button(
            t("config.clients_save"), icon=":material/save:", key="cfg_clients_save", disabled=labels == labels_of(df)
        ):
            try:
                cache.api().update_config({FIELD: labels})
            except AdminError as exc:
                st.error(exc.errors.get(FIELD) or fmt.error_text(exc))
                return
            cache.bump()
            dialogs.flash(t("config.clients_saved"))
            st.rerun()
