"""Wide tables: a table whose columns do not fit the page scrolls sideways inside its frame, and the grid shows its
scrollbar only on hover, so a reader at 1400 px sees a table cut off at the edge with nothing to say there is more.
`scroll_hint` says so under such a table (how many columns are out of view), from an estimate of the width the grid
gives each column (its longest text among the header and the first rows, within the grid's own bounds)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic.i18n import t

# The main area at a 1400 px window with the sidebar open (the layout is "wide"): what a table has before it scrolls.
PAGE_PX = 1000
CHAR_PX = 7.5  # the grid's body font, an average character
CELL_PAD_PX = 24
MIN_COL_PX, MAX_COL_PX = 60, 400  # the grid's own bounds for an automatic column width
SAMPLE_ROWS = 50


def column_widths(df: pd.DataFrame, labels: dict[str, str] | None = None) -> list[int]:
    """Estimated drawn width of each column (header label as shown, or the column's name)."""
    widths = []
    for col in df.columns:
        texts = df[col].head(SAMPLE_ROWS).map(lambda v: "" if v is None else str(v))
        chars = max([len((labels or {}).get(str(col), str(col))), *texts.str.len().tolist()])
        widths.append(int(min(MAX_COL_PX, max(MIN_COL_PX, chars * CHAR_PX + CELL_PAD_PX))))
    return widths


def hidden_columns(df: pd.DataFrame, labels: dict[str, str] | None = None, page_px: int = PAGE_PX) -> int:
    """How many columns start beyond the visible width (0 when the table fits)."""
    edge, hidden = 0, 0
    for width in column_widths(df, labels):
        if edge + width > page_px:
            hidden += 1
        edge += width
    return hidden


def labels_of(column_config: dict[str, Any] | None) -> dict[str, str]:
    """The header labels a column_config gives (st.column_config objects are dicts with a "label")."""
    out: dict[str, str] = {}
    for name, cfg in (column_config or {}).items():
        label = cfg.get("label") if isinstance(cfg, dict) else cfg if isinstance(cfg, str) else None
        if label:
            out[str(name)] = str(label)
    return out


def scroll_hint(df: pd.DataFrame, column_config: dict[str, Any] | None = None) -> None:
    """Under a table: a caption when some of its columns are out of view (scroll sideways to see them)."""
    hidden = hidden_columns(df, labels_of(column_config))
    if hidden:
        st.caption(t("common.scroll_sideways", n=hidden, total=len(df.columns)))
