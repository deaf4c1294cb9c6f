"""Config page logic: one widget per field (by its type), the unsaved-changes diff, save / discard / reset."""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

from dashboard.logic import auth, cache, dialogs, fmt, i18n
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import EN, LANGUAGES, t
from dashboard.logic.i18n import current as current_language

SECTIONS = ("general", "upstream", "routing", "logging", "alerts")
PREFIX = "cfg_"
ERRORS = "cfg_errors_state"


def wkey(name: str) -> str:
    return PREFIX + name


def to_widget(field: dict[str, Any], value: Any) -> Any:
    """API value → the value the field's widget holds."""
    ftype = field.get("type")
    if field.get("choices"):
        return value
    if ftype == "boolean":
        return bool(value)
    if ftype == "integer":
        return int(value or 0)
    if ftype == "number":
        return float(value or 0)
    if ftype == "array":
        return "\n".join(str(v) for v in value or [])
    if ftype == "object":
        return json.dumps(value or {}, indent=2, ensure_ascii=False)
    return "" if value is None else str(value)


def from_widget(field: dict[str, Any], shown: Any) -> Any:
    """Widget value → API value. Raises ValueError (with a user message) for text that does not parse."""
    ftype = field.get("type")
    if ftype == "array":
        return [line.strip() for line in str(shown).replace(",", "\n").splitlines() if line.strip()]
    if ftype == "object":
        try:
            return json.loads(shown or "{}")
        except ValueError as exc:
            raise ValueError(t("config.bad_json", msg=str(exc))) from None
    return shown


def current(field: dict[str, Any], values: dict[str, Any]) -> Any:
    """What the field's widget holds now (its session state once touched, else the saved value)."""
    name = field["name"]
    return st.session_state.get(wkey(name), to_widget(field, values.get(name)))


def changes(fields: list[dict[str, Any]], values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(fields whose widget differs from the saved value → new API value, local parse errors)."""
    patch: dict[str, Any] = {}
    bad: dict[str, str] = {}
    for field in fields:
        name = field["name"]
        shown = current(field, values)
        if shown == to_widget(field, values.get(name)):
            continue
        try:
            patch[name] = from_widget(field, shown)
        except ValueError as exc:
            bad[name] = str(exc)
    return patch, bad


def label(field: dict[str, Any]) -> str:
    key = f"field.{field['name']}"
    return t(key) if key in EN else str(field.get("description") or field["name"])


def widget(field: dict[str, Any], values: dict[str, Any]) -> None:
    name, ftype = field["name"], field.get("type")
    key = wkey(name)
    st.session_state.setdefault(key, to_widget(field, values.get(name)))
    # The API's description is English: the tooltip gives it in English only; in Chinese the label says it.
    about = field.get("description") or "" if current_language() == "en" else label(field)
    help_text = f"`{name}` · {about}"
    lo, hi = field.get("minimum"), field.get("maximum")
    if lo is not None or hi is not None:
        help_text += f" ({'' if lo is None else lo} … {'' if hi is None else hi})"
    text = label(field)
    if field.get("choices"):
        choices = list(field["choices"])
        fmt = LANGUAGES.get if name == "language" else str
        st.selectbox(text, choices, key=key, help=help_text, format_func=lambda c: fmt(c) or str(c))
    elif ftype == "boolean":
        st.toggle(text, key=key, help=help_text)
    elif ftype == "integer":
        st.number_input(text, step=1, key=key, help=help_text)
    elif ftype == "number":
        st.number_input(text, step=1.0, key=key, help=help_text, format="%.2f")
    elif ftype == "array":
        hint = t("config.secret_hint") if field.get("secret") else t("config.list_hint")
        st.text_area(text, key=key, help=f"{help_text} — {hint}", height=100)
    elif ftype == "object":
        st.text_area(text, key=key, help=help_text, height=140)
    else:
        st.text_input(text, key=key, help=help_text)


def mark(field: dict[str, Any], values: dict[str, Any], local_errors: dict[str, str]) -> None:
    """Under a field: its validation message (the API's or ours), or a note that it has unsaved changes."""
    name = field["name"]
    state = st.session_state.get(ERRORS) or {}
    shown = current(field, values)
    if name in local_errors:
        st.error(local_errors[name], icon=":material/error:")
    elif name in (state.get("errors") or {}) and state.get("shown", {}).get(name) == shown:
        st.error(state["errors"][name], icon=":material/error:")
    if name == "language":  # the default; this browser may have its own choice (the sidebar's)
        st.caption(language_note(str(values.get(name) or i18n.DEFAULT)))
    if shown != to_widget(field, values.get(name)):
        old = values.get(name)
        old_text = "•••" if field.get("secret") else json.dumps(old, ensure_ascii=False)[:80]
        st.caption(f":orange[{t('config.changed', old=old_text)}]")


def language_note(default: str) -> str:
    """Which language this browser shows, and why: its own choice (the sidebar) or the configured default."""
    mine = str(st.session_state.get("lang") or i18n.DEFAULT)
    if st.session_state.get("lang_chosen") and mine != default:
        return t("config.lang_own", lang=LANGUAGES.get(mine, mine))
    return t("config.lang_default", lang=LANGUAGES.get(mine, mine))


def clear_widgets() -> None:
    for name in [k for k in st.session_state if str(k).startswith(PREFIX)]:
        del st.session_state[name]
    st.session_state.pop(ERRORS, None)


def save(fields: list[dict[str, Any]], values: dict[str, Any]) -> None:
    patch, bad = changes(fields, values)
    if bad or not patch:
        return
    try:
        saved = cache.api().update_config(patch)
    except AdminError as exc:
        if exc.kind == "invalid":
            shown = {f["name"]: current(f, values) for f in fields}
            st.session_state[ERRORS] = {"errors": exc.errors or {"config": exc.message}, "shown": shown}
            st.session_state["cfg_flash_invalid"] = True
        else:
            dialogs.flash(fmt.error_text(exc), "error")
        st.rerun()
    if "language" in patch and saved.get("language") in LANGUAGES:
        i18n.remember_default(saved["language"])
        if not st.session_state.get("lang_chosen"):  # a browser with its own choice keeps it
            auth.set_language(saved["language"])
    clear_widgets()
    cache.bump()
    dialogs.flash(t("config.saved", n=len(patch)))
    st.rerun()


def reset(_payload: dict[str, Any]) -> None:
    cache.api().reset_config()
    clear_widgets()
    dialogs.flash(t("config.reset_done"))
