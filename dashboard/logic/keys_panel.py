"""Monitor page logic: metric cards, key tables, per-key and batch actions, and the key dialogs."""

from __future__ import annotations

from datetime import date
from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic import cache, dialogs, fmt, paging, tables, times
from dashboard.logic.client import KEY_STATUSES, AdminError, KeyPage
from dashboard.logic.i18n import t, wkey

SECTIONS = {"active": ("active", "cooling"), "inactive": ("invalid", "disabled")}
STATUS_ICON = {"active": "●", "cooling": "◐", "invalid": "✕", "disabled": "○"}  # plain glyphs: no emoji font needed
STATUS_BADGE = {
    "active": ":green[:material/check_circle:]",
    "cooling": ":blue[:material/hourglass_top:]",
    "invalid": ":red[:material/cancel:]",
    "disabled": ":gray[:material/pause_circle:]",
}
BATCH_CHUNK = 25  # ids per batch call: small enough for a moving progress bar, big enough to stay fast


# -- cards -------------------------------------------------------------------------------------------------------
def cards(summary: dict[str, Any], counts: dict[str, int]) -> None:
    windows = summary.get("windows") or {}
    keys = {**counts, **(summary.get("keys") or {})}
    st.caption(t("monitor.keys_heading"))
    for col, status in zip(st.columns(4), KEY_STATUSES, strict=True):
        col.metric(
            f"{STATUS_BADGE[status]} {t('monitor.keys_status', status=t(f'status.{status}'))}",
            fmt.fmt_int(keys.get(status, 0)),
            border=True,
        )
    st.caption(t("monitor.calls_heading"))
    for col, win in zip(st.columns(4), ("1m", "1h", "24h", "month"), strict=True):
        w = windows.get(win) or {}
        failures = int(w.get("failures") or 0)
        col.metric(
            t(f"monitor.calls_{win}"),
            fmt.fmt_int(w.get("calls")),
            delta=t("monitor.failures_delta", n=fmt.fmt_int(failures)) if failures else None,
            delta_color="inverse",
            delta_arrow="off",
            border=True,
        )
    day = windows.get("24h") or {}
    month = windows.get("month") or {}
    st.caption(t("monitor.quality_heading"))
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(t("monitor.success_rate"), fmt.fmt_pct(day.get("success_rate")) if day.get("calls") else "–", border=True)
    c2.metric(t("monitor.avg_latency"), fmt.fmt_ms(day.get("avg_latency_ms")), border=True)
    c3.metric(t("monitor.p95_latency"), fmt.fmt_ms(day.get("p95_latency_ms")), border=True)
    c4.metric(
        t("monitor.tokens_24h"),
        fmt.fmt_int(day.get("total_tokens")),
        border=True,
        help=t("monitor.tokens_month", n=fmt.fmt_int(month.get("total_tokens"))),
    )


# -- filters and tables ------------------------------------------------------------------------------------------
def filters(projects: list[str]) -> dict[str, Any]:
    c1, c2, c3, c4, c5 = st.columns([3, 2, 2, 2, 1])
    q = c1.text_input(t("monitor.search"), key="key_q")
    statuses = c2.multiselect(
        t("monitor.filter_status"),
        KEY_STATUSES,
        format_func=lambda s: t(f"status.{s}"),
        key=wkey("key_status"),
        placeholder=t("common.all"),
    )
    project = c3.selectbox(
        t("monitor.filter_project"),
        ["", *projects],
        key=wkey("key_project"),
        format_func=lambda p: p or t("common.all"),
    )
    created = c4.date_input(t("monitor.filter_created"), value=(), key="key_created", format="YYYY-MM-DD")  # type: ignore[arg-type]
    min_failures = c5.number_input(t("monitor.filter_failures"), min_value=0, step=1, key="key_failures")
    out: dict[str, Any] = {"q": q.strip() or None, "project": project or None, "min_failures": int(min_failures)}
    if isinstance(created, (list, tuple)) and created:
        start: date = created[0]
        end: date = created[1] if len(created) > 1 else created[0]
        out["created_from"], out["created_to"] = times.day_range_utc(start, end)
    out["statuses"] = list(statuses)
    return out


def section_statuses(section: str, chosen: list[str]) -> list[str]:
    own = SECTIONS[section]
    return [s for s in own if not chosen or s in chosen]


def cooling_text(cooldowns: Any) -> str:
    """ "gemini-2.5-pro until 14:05 (per minute)" for each cooling model of a key; blank when none."""
    if not isinstance(cooldowns, list):
        return ""
    parts = []
    for c in cooldowns:
        if not isinstance(c, dict):
            continue
        until = times.local(pd.Series(pd.to_datetime([c.get("until")], utc=True, errors="coerce", format="ISO8601")))
        when = until.iloc[0].strftime("%H:%M") if not until.empty and pd.notna(until.iloc[0]) else ""
        parts.append(
            t("monitor.cooling_item", model=c.get("model") or "–", until=when) if when else str(c.get("model"))
        )
    return ", ".join(sorted(parts))


def table_frame(items: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "id",
        "status",
        "cooling",
        "key",
        "label",
        "project",
        "requests",
        "success",
        "failures",
        "last_used",
        "created",
        "last_error",
    ]
    if items.empty:
        return pd.DataFrame(columns=columns)
    requests = items["requests"].fillna(0).astype("int64")
    successes = items["successes"].fillna(0).astype("int64")
    return pd.DataFrame(
        {
            "id": items["id"],
            "status": items["status"].map(lambda s: f"{STATUS_ICON.get(s, '')} {t(f'status.{s}')}"),
            "cooling": items["cooling"].map(cooling_text),
            "key": items["masked"],
            "label": items["label"].map(fmt.text),
            "project": items["project"].map(fmt.text),
            "requests": requests,
            "success": (successes / requests.where(requests > 0)).astype("float64"),
            "failures": items["consecutive_failures"].fillna(0).astype(int).astype(str)
            + " / "
            + items["total_failures"].fillna(0).astype(int).astype(str),
            "last_used": times.local(items["last_used_at"]),
            "created": times.local(items["created_at"]),
            "last_error": items["last_error"].map(fmt.text),
        },
        columns=columns,
    )


def column_config() -> dict[str, Any]:
    cc = st.column_config
    return {
        "id": cc.TextColumn(t("monitor.col_id"), width="medium"),
        "status": cc.TextColumn(t("monitor.col_status"), width="small"),
        "cooling": cc.TextColumn(t("monitor.col_cooling"), width="medium"),
        "key": cc.TextColumn(t("monitor.col_key"), width="medium"),
        "label": cc.TextColumn(t("monitor.col_label"), width="medium"),
        "project": cc.TextColumn(t("monitor.col_project"), width="medium"),
        "requests": cc.NumberColumn(t("monitor.col_requests"), format="localized", width="small"),
        "success": cc.NumberColumn(t("monitor.col_success"), format="percent", width="small"),
        "failures": cc.TextColumn(t("monitor.col_failures"), width="small"),
        "last_used": cc.DatetimeColumn(t("monitor.col_last_used"), format="YYYY-MM-DD HH:mm:ss"),
        "created": cc.DatetimeColumn(t("monitor.col_created"), format="YYYY-MM-DD HH:mm"),
        "last_error": cc.TextColumn(t("monitor.col_last_error"), width="large"),
    }


def key_section(section: str, flt: dict[str, Any]) -> None:
    statuses = section_statuses(section, flt["statuses"])
    if not statuses:
        st.subheader(t(f"monitor.{section}_section", n=0))
        st.caption(t("monitor.hidden_by_filter"))
        return
    params = {k: v for k, v in flt.items() if k != "statuses"}
    total = cache.safe(cache.api().keys)(status=statuses, page_size=1, **params)
    if total is None:
        return
    st.subheader(t(f"monitor.{section}_section", n=fmt.fmt_int(total.total)))
    page, size = paging.pager(f"keys_{section}", total.total)
    result: KeyPage | None = cache.safe(cache.api().keys)(status=statuses, page=page, page_size=size, **params)
    if result is None:
        return
    items = result.items
    if items.empty:
        st.caption(t("monitor.no_keys"))
        return
    table_key = f"tbl_{section}"
    frame, config = table_frame(items), column_config()
    st.dataframe(
        frame,
        key=table_key,
        on_select="rerun",
        selection_mode="multi-row",
        hide_index=True,
        column_config=config,
        width="stretch",
    )
    tables.scroll_hint(frame, config)
    rows = [r for r in paging.selected_rows(table_key) if r < len(items)]
    if not rows:
        st.caption(t("monitor.select_hint"))
    elif len(rows) == 1:
        key_actions(section, items.iloc[rows[0]].to_dict())
    else:
        batch_actions(section, [str(items.iloc[r]["id"]) for r in rows])


def _label(key: dict[str, Any]) -> str:
    label = key.get("label") if isinstance(key.get("label"), str) and key.get("label") else None
    return f"{label} ({key.get('id')})" if label else str(key.get("id"))


# -- per-key actions ---------------------------------------------------------------------------------------------
def key_actions(section: str, key: dict[str, Any]) -> None:
    kid = str(key["id"])
    st.markdown(t("monitor.selected_one", key=f"`{_label(key)}`"))
    cols = st.columns(6)
    if cols[0].button(t("monitor.verify"), icon=":material/task_alt:", key=f"verify_{section}"):
        act(kid, "verify", _label(key))
    if cols[1].button(t("monitor.reset"), icon=":material/restart_alt:", key=f"reset_{section}"):
        act(kid, "reset", _label(key))
    if cols[2].button(t("monitor.copy"), icon=":material/content_copy:", key=f"copy_{section}"):
        try:
            dialogs.open_dialog("reveal", id=kid, label=_label(key), secret=cache.api().reveal(kid))
        except AdminError as exc:
            cache.show_error(exc)
        else:
            st.rerun()
    if cols[3].button(t("monitor.details"), icon=":material/info:", key=f"details_{section}"):
        dialogs.open_dialog("details", id=kid)
        st.rerun()
    toggle = "enable" if key.get("status") in ("disabled", "invalid") else "disable"
    icon = ":material/play_circle:" if toggle == "enable" else ":material/pause_circle:"
    if cols[4].button(t(f"monitor.{toggle}"), icon=icon, key=f"toggle_{section}"):
        act(kid, toggle, _label(key))
    if cols[5].button(t("monitor.delete"), icon=":material/delete:", key=f"delete_{section}"):
        dialogs.ask_confirm("delete_keys", t("monitor.confirm_delete_one", key=_label(key)), ids=[kid])
        st.rerun()


def act(kid: str, action: str, label: str) -> None:
    try:
        result = cache.api().key_action(kid, action)
    except AdminError as exc:
        dialogs.flash(fmt.error_text(exc), "error")
    else:
        ok = result.get("ok", True) if isinstance(result, dict) else True
        msg = (result.get("message") if isinstance(result, dict) else None) or t("monitor.ok")
        dialogs.flash(
            t("monitor.action_done", action=t(f"monitor.{action}"), key=label, msg=msg), "success" if ok else "warning"
        )
    cache.bump()
    st.rerun()


# -- batch actions -----------------------------------------------------------------------------------------------
def batch_actions(section: str, ids: list[str]) -> None:
    st.markdown(t("monitor.selected_many", n=len(ids)))  # two or more: a plural form always
    cols = st.columns(5)
    chosen = None
    for col, action, icon in zip(
        cols,
        ("verify", "enable", "disable", "reset", "delete"),
        (
            ":material/task_alt:",
            ":material/play_circle:",
            ":material/pause_circle:",
            ":material/restart_alt:",
            ":material/delete:",
        ),
        strict=True,
    ):
        if col.button(t(f"monitor.batch_{action}", n=len(ids)), icon=icon, key=f"batch_{action}_{section}"):
            chosen = action
    if chosen == "delete":
        dialogs.ask_confirm("delete_keys", t("monitor.confirm_delete_many", n=len(ids)), ids=ids)
        st.rerun()
    elif chosen:
        run_batch(chosen, ids)
        st.rerun()


def run_batch(action: str, ids: list[str]) -> dict[str, Any]:
    """Run `action` over `ids` in chunks with a progress bar; keep a summary for the page to show."""
    name = t(f"monitor.{action}")
    bar = st.progress(0.0, text=t("monitor.batch_progress", action=name, done=0, n=len(ids)))
    results: list[dict[str, Any]] = []
    for start in range(0, len(ids), BATCH_CHUNK):
        chunk = ids[start : start + BATCH_CHUNK]
        try:
            answer = cache.api().batch(action, chunk)
            results.extend(answer.get("results") or [{"id": k, "ok": True} for k in chunk])
        except AdminError as exc:
            results.extend({"id": k, "ok": False, "message": fmt.error_text(exc)} for k in chunk)
        done = min(len(ids), start + len(chunk))
        bar.progress(done / len(ids), text=t("monitor.batch_progress", action=name, done=done, n=len(ids)))
    ok = sum(1 for r in results if r.get("ok"))
    summary = {
        "action": action,
        "ok": ok,
        "failed": len(results) - ok,
        "failures": [r for r in results if not r.get("ok")],
    }
    st.session_state["batch_result"] = summary
    cache.bump()
    return summary


def batch_summary() -> None:
    summary = st.session_state.get("batch_result")
    if not summary:
        return
    text = t(
        "monitor.batch_result", action=t(f"monitor.{summary['action']}"), ok=summary["ok"], failed=summary["failed"]
    )
    (st.warning if summary["failed"] else st.success)(text)
    if summary["failures"]:
        with st.expander(t("monitor.batch_failures")):
            failures = pd.DataFrame(summary["failures"])
            st.dataframe(failures, hide_index=True, width="stretch", column_config=fmt.column_labels(failures))
    if st.button(t("common.dismiss"), key="batch_dismiss"):
        st.session_state.pop("batch_result", None)
        st.rerun()


def delete_keys(payload: dict[str, Any]) -> None:
    ids = list(payload.get("ids") or [])
    if len(ids) == 1:
        cache.api().key_action(ids[0], "delete")
        dialogs.flash(t("monitor.action_done", action=t("monitor.delete"), key=ids[0], msg=t("monitor.ok")))
    else:
        run_batch("delete", ids)


# -- dialogs -----------------------------------------------------------------------------------------------------
def reveal_dialog(state: dict[str, Any]) -> None:
    st.caption(t("monitor.reveal_note", key=state.get("label", state.get("id"))))
    st.code(state.get("secret", ""), language=None)
    if st.button(t("common.close"), key="reveal_close"):
        dialogs.close_dialog()


def details_dialog(state: dict[str, Any]) -> None:
    try:
        info = cache.cached(cache.api().key)(state["id"])
    except AdminError as exc:
        cache.show_error(exc)
        return
    key = info["key"]
    status = key.get("status", "")
    st.markdown(
        f"**{_label(key)}** · `{key.get('masked', '')}` · {STATUS_BADGE.get(status, '')} "
        f"{t(f'status.{status}')} · {t('monitor.col_project')}: {key.get('project') or '–'}"
    )
    c1, c2, c3 = st.columns(3)
    c1.metric(t("monitor.col_requests"), fmt.fmt_int(key.get("requests")))
    requests = int(key.get("requests") or 0)
    c2.metric(t("monitor.col_success"), fmt.fmt_pct((key.get("successes") or 0) / requests) if requests else "–")
    c3.metric(t("monitor.col_failures"), f"{key.get('consecutive_failures', 0)} / {key.get('total_failures', 0)}")
    if key.get("last_error"):
        st.caption(t("monitor.last_error", msg=key["last_error"]))
    tab_usage, tab_recent, tab_cool = st.tabs(
        [t("monitor.usage_by_model"), t("monitor.recent_calls"), f"{t('monitor.cooldowns')} · {t('monitor.headroom')}"]
    )
    with tab_usage:
        _frame(info["usage_by_model"])
    with tab_recent:
        _frame(info["recent_calls"])
    with tab_cool:
        if info["cooldowns"].empty:
            st.caption(t("monitor.no_cooldowns"))
        else:
            _frame(info["cooldowns"])
        st.caption(t("monitor.headroom"))
        _frame(info["headroom"])
    if st.button(t("common.close"), key="details_close"):
        dialogs.close_dialog()


def _frame(df: pd.DataFrame) -> None:
    if df.empty:
        st.caption(t("common.none"))
        return
    df = df.copy()
    for col in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[col]):
            df[col] = times.local(df[col])
    df, config = fmt.readable(df)
    st.dataframe(df, hide_index=True, width="stretch", column_config=config)


def add_dialog(state: dict[str, Any]) -> None:
    text = st.text_area(t("monitor.add_text"), height=180, key="add_text")
    c1, c2 = st.columns(2)
    project = c1.text_input(t("monitor.add_project"), key="add_project")
    label = c2.text_input(t("monitor.add_label"), key="add_label")
    if st.button(t("monitor.add_submit"), type="primary", key="add_submit"):
        if not text.strip():
            st.warning(t("monitor.add_empty"))
        else:
            try:
                state["result"] = cache.api().add_keys(text, project.strip() or None, label.strip() or None)
                cache.bump()
            except AdminError as exc:
                cache.show_error(exc)
    result = state.get("result")
    if result:
        st.success(
            t(
                "monitor.add_result",
                added=result.get("added", 0),
                duplicates=result.get("duplicates", 0),
                rejected=result.get("rejected", 0),
            )
        )
    if st.button(t("common.close"), key="add_close"):
        for name in ("add_text", "add_project", "add_label"):
            st.session_state.pop(name, None)
        dialogs.close_dialog()


def projects() -> list[str]:
    """Projects seen in the pool (for the filter), from one listing of up to 1,000 keys."""
    try:
        page = cache.cached(cache.api().keys, ttl=60.0)(page_size=1000)
    except AdminError:  # the tables below report connection problems; the filter just has no choices
        return []
    if page.items.empty or "project" not in page.items:
        return []
    return sorted({str(p) for p in page.items["project"].dropna() if str(p)})
