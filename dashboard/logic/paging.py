"""Paging and row selection for the dashboard's tables."""

from __future__ import annotations

import streamlit as st

from dashboard.logic import fmt
from dashboard.logic.i18n import t

PAGE_SIZES = [10, 20, 50, 100, 500]


def pages(total: int, page_size: int) -> int:
    return max(1, -(-int(total) // max(1, int(page_size))))


def pager(key: str, total: int, default_size: int = 50) -> tuple[int, int]:
    """Page-size select + page number; returns (page, page_size). Both are keyed widgets (tests set them)."""
    left, mid, right = st.columns([1, 1, 4], vertical_alignment="bottom")
    size = left.selectbox(t("common.page_size"), PAGE_SIZES, index=PAGE_SIZES.index(default_size), key=f"{key}_size")
    n_pages = pages(total, size)
    if st.session_state.get(f"{key}_page", 1) > n_pages:
        st.session_state[f"{key}_page"] = n_pages
    page = mid.number_input(t("common.page"), min_value=1, max_value=n_pages, step=1, key=f"{key}_page")
    right.caption(t("common.page_of", page=page, pages=n_pages, total=fmt.fmt_int(total)))
    return int(page), int(size)


def selected_rows(table_key: str) -> list[int]:
    """Row positions selected in a keyed `st.dataframe(on_select="rerun")`."""
    state = st.session_state.get(table_key)
    try:
        return list(state["selection"]["rows"])  # type: ignore[index]
    except (KeyError, TypeError):
        return []
