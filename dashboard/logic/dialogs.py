"""Dialogs opened through session state (so AppTest can open them too), confirmations, and flash messages that
survive the rerun after an action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from dashboard.logic import cache, fmt
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import t

DIALOG = "_dialog"
FLASH = "_flash"
Body = Callable[[dict[str, Any]], None]


def open_dialog(name: str, **data: Any) -> None:
    st.session_state[DIALOG] = {"name": name, **data}


def close_dialog(rerun: bool = True) -> None:
    st.session_state.pop(DIALOG, None)
    if rerun:
        st.rerun()


def _dismissed() -> None:
    st.session_state.pop(DIALOG, None)


def show_dialog(dialogs: dict[str, tuple[str, Body, str]]) -> None:
    """Render the open dialog if it belongs to this page: {name: (title key, body(state), width)}."""
    state = st.session_state.get(DIALOG)
    if not state or state.get("name") not in dialogs:
        return
    title_key, body, width = dialogs[state["name"]]
    st.dialog(t(title_key), width=width, on_dismiss=_dismissed)(body)(state)  # type: ignore[call-overload]


def ask_confirm(action: str, message: str, **payload: Any) -> None:
    open_dialog("confirm", action=action, message=message, payload=payload)


def confirm_body(handlers: dict[str, Body]) -> Body:
    """A confirmation dialog body: runs handlers[action](payload) on Confirm, then closes."""

    def body(state: dict[str, Any]) -> None:
        st.write(state.get("message", ""))
        left, right = st.columns(2)
        if left.button(t("common.confirm"), type="primary", key="confirm_yes", width="stretch"):
            try:
                handlers[state["action"]](state.get("payload") or {})
            except AdminError as exc:
                flash(fmt.error_text(exc), "error")
            cache.bump()
            close_dialog()
        if right.button(t("common.cancel"), key="confirm_no", width="stretch"):
            close_dialog()

    return body


def flash(message: str, kind: str = "success") -> None:
    st.session_state.setdefault(FLASH, []).append((kind, message))


def page_header(title_key: str) -> None:
    """A page's title, then the messages left by the previous run's action."""
    st.title(t(title_key))
    show_flash()


def show_flash() -> None:
    for kind, message in st.session_state.pop(FLASH, []):
        {"success": st.success, "error": st.error, "warning": st.warning}.get(kind, st.info)(message)
