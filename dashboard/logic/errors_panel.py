"""Error-logs page logic: filters, the table, the detail dialog, deletes and the CSV export."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic import cache, dialogs, fmt, times
from dashboard.logic.client import AdminClient
from dashboard.logic.i18n import label_of, t, wkey

CSV_MAX_ROWS = 100_000
CSV_PAGE = 1000


def filters() -> dict[str, Any]:
    """The filter widgets → the API's filter dict (keys as in GET /errors: from, to, key_id, ...)."""
    today = times.today()
    c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
    picked = c1.date_input(
        t("common.date_range"), value=(today - timedelta(days=6), today), key="err_range", format="YYYY-MM-DD"
    )
    start, end = times.date_range(picked, (today - timedelta(days=6), today))
    lo, hi = times.day_range_utc(start, end)
    facets = cache.safe(cache.api().error_facets, ttl=30.0)(lo, hi) or {}
    key_id = _choice(c2, "errors.key", facets.get("key_id", []), "err_key")
    model = _choice(c3, "errors.model", facets.get("model", []), "err_model")
    status = _choice(c4, "errors.status", facets.get("status", []), "err_status")
    c5, c6 = st.columns([1, 3])
    error_type = _choice(c5, "errors.type", facets.get("error_type", []), "err_type", "errtype")
    q = c6.text_input(t("errors.q"), key="err_q")
    return {
        "from": lo,
        "to": hi,
        "key_id": key_id,
        "model": model,
        "status": status,
        "error_type": error_type,
        "q": q.strip() or None,
    }


def _choice(col: Any, label: str, values: list[Any], key: str, names: str = "") -> Any:
    """A dropdown of the values that exist in the range ("All" = no filter); a value chosen earlier that has left
    the range stays selectable so the filter does not silently change. `names`: the i18n prefix of the values'
    names (error types), else values are shown as they are."""
    chosen = st.session_state.get(wkey(key))
    options = [None, *values] + ([chosen] if chosen is not None and chosen not in values else [])

    def shown(v: Any) -> str:
        if v is None:
            return t("common.all")
        return label_of(names, v) if names else str(v)

    return col.selectbox(t(label), options, key=wkey(key), format_func=shown)


def query_args(flt: dict[str, Any]) -> dict[str, Any]:
    """The filter dict as AdminClient.errors() keyword arguments."""
    args = {k: v for k, v in flt.items() if k not in ("from", "to")}
    return {"start": flt.get("from"), "end": flt.get("to"), **args}


def table_frame(items: pd.DataFrame) -> pd.DataFrame:
    cols = {
        "ts": "ts",
        "key_id": "key",
        "model": "model",
        "status": "status",
        "error_type": "type",
        "message": "message",
        "request_id": "request",
    }
    df = pd.DataFrame({new: items.get(old) for old, new in cols.items()})
    if not df.empty:
        df["ts"] = times.local(df["ts"])
        for col in ("key", "model", "request"):
            df[col] = df[col].map(fmt.text)
        df["type"] = df["type"].map(lambda v: fmt.text(v) and label_of("errtype", v))
        df["message"] = df["message"].map(fmt.text).str.slice(0, 300)
    return df


def column_config() -> dict[str, Any]:
    cc = st.column_config
    return {
        "ts": cc.DatetimeColumn(t("errors.col_time"), format="YYYY-MM-DD HH:mm:ss"),
        "key": cc.TextColumn(t("errors.col_key"), width="medium"),
        "model": cc.TextColumn(t("errors.col_model"), width="medium"),
        "status": cc.NumberColumn(t("errors.col_status"), width="small", format="%d"),
        "type": cc.TextColumn(t("errors.col_type"), width="medium"),
        "message": cc.TextColumn(t("errors.col_message"), width="large"),
        "request": cc.TextColumn(t("errors.col_request"), width="medium"),
    }


def csv_maker(client: AdminClient, flt: dict[str, Any]) -> Any:
    """A callable for st.download_button: fetches every matching row (up to CSV_MAX_ROWS) only when clicked."""

    def make() -> bytes:
        frames, page = [], 1
        while page * CSV_PAGE <= CSV_MAX_ROWS + CSV_PAGE:
            chunk = client.errors(page=page, page_size=CSV_PAGE, **query_args(flt))
            frames.append(chunk.items)
            if len(chunk.items) < CSV_PAGE or page * CSV_PAGE >= chunk.total:
                break
            page += 1
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return df.to_csv(index=False).encode("utf-8")

    return make


def _pretty(text: Any) -> tuple[str, str | None]:
    """JSON text pretty-printed (language "json"), anything else as is."""
    if not isinstance(text, str):
        return json.dumps(text, indent=2, ensure_ascii=False), "json"
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False), "json"
    except ValueError:
        return text, None


def detail_dialog(state: dict[str, Any]) -> None:
    entry = cache.safe(cache.api().error)(state["id"])
    if entry is None:
        return
    ts = pd.Series(pd.to_datetime([entry.get("ts")], utc=True, errors="coerce", format="ISO8601"))
    when = times.local(ts).iloc[0]
    when = when.strftime("%Y-%m-%d %H:%M:%S") if pd.notna(when) else "–"
    st.caption(
        t(
            "errors.meta",
            ts=when,
            key=entry.get("key_id") or "–",
            model=entry.get("model") or "–",
            status=entry.get("status") or "–",
            type=label_of("errtype", entry.get("error_type")),
            request=entry.get("request_id") or "–",
        )
    )
    st.markdown(f"**{t('errors.message')}**")
    st.code(entry.get("message") or "", language=None, wrap_lines=True)
    for field, title in (
        ("upstream_body", "errors.upstream_body"),
        ("stack_trace", "errors.stack_trace"),
        ("request_body", "errors.request_body"),
    ):
        st.markdown(f"**{t(title)}**")
        value = entry.get(field)
        if value in (None, ""):
            off = field == "request_body" and not cache.config_values().get("log_request_bodies")
            st.caption(t("errors.request_body_off") if off else t("errors.not_recorded"))
        else:
            text, lang = _pretty(value)
            st.code(text, language=lang or "text", wrap_lines=True, height=min(400, 40 + 20 * text.count("\n")))
    if st.button(t("common.close"), key="err_detail_close"):
        dialogs.close_dialog()


def delete_errors(payload: dict[str, Any]) -> None:
    n = cache.api().delete_errors(**payload)
    dialogs.flash(t("errors.deleted", n=fmt.fmt_int(n)))
