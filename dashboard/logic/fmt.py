"""Formatting for the screen: numbers, latencies, percentages, plurals, empty labels, admin errors, headers."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dashboard.logic import auth
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import EN, t

BLANK = ""


def _missing(n: Any) -> bool:
    return n is None or (isinstance(n, float) and pd.isna(n)) or n is pd.NA or n is pd.NaT


def fmt_int(n: Any) -> str:
    """1234567 → "1,234,567"; nothing → "–"."""
    if _missing(n):
        return "–"
    try:
        return f"{round(float(n)):,}"
    except (TypeError, ValueError):
        return "–"


def fmt_ms(n: Any) -> str:
    """Whole milliseconds with separators."""
    if _missing(n):
        return "–"
    return f"{float(n):,.0f} ms"


def fmt_pct(rate: Any) -> str:
    """A ratio in [0, 1] as a percentage with one decimal."""
    if _missing(rate):
        return "–"
    return f"{float(rate) * 100:.1f} %"


def plural(key: str, n: int, **kw: Any) -> str:
    """`key.one` for exactly one, `key.other` otherwise (Chinese has one form; both keys exist in both tables)."""
    return t(f"{key}.{'one' if n == 1 else 'other'}", n=fmt_int(n), **kw)


def text(value: Any) -> str:
    """A label for a cell: blank for missing values, never "None" / "nan"."""
    return BLANK if _missing(value) or value == "" else str(value)


def key_name(value: Any) -> str:
    """A key id, or what a call without a key was (refused before any key, or unauthorised)."""
    return t("common.no_key") if _missing(value) or value == "" else str(value)


def error_text(exc: AdminError) -> str:
    """An admin error in the session's language: its machine-readable reason when known, else the proxy's words."""
    head = t(f"error.{exc.kind}")
    if exc.kind == "unreachable":
        return f"{t('login.unreachable', url=auth.client().base_url)} ({exc.cause or exc.kind})"
    if exc.reason and f"reason.{exc.reason}" in EN:
        detail = t(f"reason.{exc.reason}", field=exc.field or "", detail=exc.detail or "")
        return f"{head} {t('error.detail', msg=detail)}"
    if exc.message and exc.message not in head:
        return f"{head} {t('error.detail', msg=exc.message)}"
    return head


def sql_error_text(exc: AdminError) -> str:
    """A refused or failed query: the translated reason and DuckDB's own message (data, shown as is)."""
    if exc.reason and f"reason.{exc.reason}" in EN:
        return t(f"reason.{exc.reason}", field=exc.field or "", detail=exc.detail or exc.message)
    if exc.kind in ("api", "invalid"):
        return exc.message[:1].upper() + exc.message[1:]
    return error_text(exc)


def column_labels(df: pd.DataFrame) -> dict[str, Any]:
    """Translated headers for the API's column names (unknown columns keep their own name)."""
    return {c: t(f"col.{c}") for c in df.columns if f"col.{c}" in EN}


PERCENT_COLUMNS = ("headroom", "success_rate")


def readable(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """An API table made readable: whole milliseconds, ratios as %, counts with separators, blanks not "None";
    with translated headers. Returns (frame, column_config) for st.dataframe."""
    import streamlit as st  # only the page modules need Streamlit; this module's other helpers do not

    cc = st.column_config
    df = df.copy()
    config: dict[str, Any] = {}
    for col in df.columns:
        label = t(f"col.{col}") if f"col.{col}" in EN else col
        values = df[col]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_datetime64_any_dtype(values):
            config[col] = label
        elif col in PERCENT_COLUMNS:
            config[col] = cc.NumberColumn(label, format="percent")
        elif pd.api.types.is_numeric_dtype(values):
            if str(col).endswith("_ms"):
                df[col] = values.round().astype("Int64")
            config[col] = cc.NumberColumn(label, format="localized")
        else:
            df[col] = values.map(text)
            config[col] = cc.TextColumn(label)
    return df, config
