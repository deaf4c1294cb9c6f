"""Session plumbing shared by the entry script and the pages: connection settings, the admin client, a small
per-session cache, error display, dialogs opened through session state, flash messages and time zones."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import pandas as pd
import streamlit as st

from dashboard.client import AdminClient, AdminError
from dashboard.i18n import EN, t
from proxy_service.envfile import env_setting

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"
CACHE_TTL_S = 5.0
DIALOG = "_dialog"
FLASH = "_flash"


# -- connection settings ---------------------------------------------------------------------------------------
def setting(name: str, default: str = "") -> str:
    """Environment first, then `.env` (the same reader as the proxy's)."""
    value = env_setting(name)
    return value if value is not None else default


def env_admin_url() -> str:
    return setting("KEYRACK_ADMIN_URL", DEFAULT_ADMIN_URL).rstrip("/") or DEFAULT_ADMIN_URL


def env_admin_token() -> str:
    return setting("KEYRACK_ADMIN_TOKEN", "")


def auto_sign_in_allowed() -> bool:
    """The env token signs visitors in by itself only while the dashboard listens on loopback (the demo, a laptop):
    on any other address every visitor who can reach it would be the admin. Unset means every interface."""
    host = (st.get_option("server.address") or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@st.cache_resource(show_spinner=False)
def _http() -> httpx.Client:
    """One pooled HTTP client for every session of this dashboard process."""
    return httpx.Client(timeout=15.0, limits=httpx.Limits(max_connections=20, max_keepalive_connections=10))


def make_client(url: str, token: str) -> AdminClient:
    return AdminClient(url, token, http=_http())


def client() -> AdminClient:
    auth = st.session_state.get("auth") or {}
    return make_client(auth.get("url", env_admin_url()), auth.get("token", ""))


def logged_in() -> bool:
    return bool(st.session_state.get("auth"))


def require_login() -> None:
    """First line of every page. A page reached without the entry script (Streamlit serves dashboard/pages/*.py by
    URL until some session has called st.navigation) goes to the login gate in the entry script first."""
    if not logged_in():
        st.switch_page(Path(__file__).with_name("app.py"))


def sign_in(url: str, token: str) -> AdminError | None:
    """Check URL + token with one admin call; on success remember them and adopt the configured language.
    `url` is server-side configuration (KEYRACK_ADMIN_URL / --admin-url), never a visitor's input: the dashboard
    must not fetch a URL a stranger chose and show the answer."""
    try:
        cfg = make_client(url, token).check()
    except AdminError as exc:
        return exc
    st.session_state["auth"] = {"url": url.rstrip("/"), "token": token}
    if not st.session_state.get("lang_chosen"):
        lang = (cfg.get("values") or {}).get("language", "en")
        set_language(lang)
    bump()
    return None


def set_language(lang: str) -> None:
    """Switch the language; the sidebar's selector follows on the next run (it may already be drawn in this one)."""
    st.session_state["lang"] = lang
    st.session_state["_lang_sync"] = True


def sign_out() -> None:
    for name in ("auth", DIALOG, "_cache"):
        st.session_state.pop(name, None)
    st.session_state["login_tried_env"] = True  # don't log straight back in with the env token


# -- data access -----------------------------------------------------------------------------------------------
def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple, set)):
        return tuple(_freeze(v) for v in value)
    return value


def fetch(method: str, *args: Any, ttl: float = CACHE_TTL_S, **kwargs: Any) -> Any:
    """`client().<method>(...)`, remembered for `ttl` seconds in this session (until `bump()`).

    Streamlit reruns the page on every click; this keeps one click from costing the same API calls twice.
    """
    cache: dict[Any, tuple[float, Any]] = st.session_state.setdefault("_cache", {})
    key = (method, _freeze(args), _freeze(kwargs), st.session_state.get("_data_version", 0))
    now = time.monotonic()
    hit = cache.get(key)
    if hit is not None and now - hit[0] < ttl:
        return hit[1]
    value = getattr(client(), method)(*args, **kwargs)
    for old in [k for k, (at, _v) in cache.items() if now - at > 120]:
        del cache[old]
    cache[key] = (now, value)
    return value


TABLES = ("tbl_active", "tbl_inactive", "tbl_errors")


def bump() -> None:
    """Forget cached answers and table selections (after a change, or on Refresh): rows may have moved."""
    st.session_state["_data_version"] = st.session_state.get("_data_version", 0) + 1
    st.session_state.pop("_cache", None)
    for name in TABLES:
        st.session_state.pop(name, None)


def error_text(exc: AdminError) -> str:
    head = t(f"error.{exc.kind}")
    if exc.kind == "unreachable":
        return f"{t('login.unreachable', url=client().base_url)} ({exc.cause or exc.kind})"
    if exc.message and exc.message not in head:
        return f"{head} {t('error.detail', msg=exc.message)}"
    return head


def show_error(exc: AdminError) -> None:
    if exc.kind == "unauthorized":
        st.session_state.pop("auth", None)
    st.error(error_text(exc), icon=":material/error:")


def safe(method: str, *args: Any, default: Any = None, **kwargs: Any) -> Any:
    """`fetch(...)`, but an AdminError is shown in place and `default` returned (the page keeps rendering)."""
    try:
        return fetch(method, *args, **kwargs)
    except AdminError as exc:
        show_error(exc)
        return default


def config() -> dict[str, Any]:
    return safe("config", ttl=30.0, default={}) or {}


def config_values() -> dict[str, Any]:
    return config().get("values") or {}


# -- dialogs (opened through session state, so AppTest can open them too) ----------------------------------------
def open_dialog(name: str, **data: Any) -> None:
    st.session_state[DIALOG] = {"name": name, **data}


def close_dialog(rerun: bool = True) -> None:
    st.session_state.pop(DIALOG, None)
    if rerun:
        st.rerun()


def _dismissed() -> None:
    st.session_state.pop(DIALOG, None)


def show_dialog(dialogs: dict[str, tuple[str, Callable[[dict[str, Any]], None], str]]) -> None:
    """Render the open dialog if it belongs to this page: {name: (title key, body(state), width)}."""
    state = st.session_state.get(DIALOG)
    if not state or state.get("name") not in dialogs:
        return
    title_key, body, width = dialogs[state["name"]]
    st.dialog(t(title_key), width=width, on_dismiss=_dismissed)(body)(state)  # type: ignore[call-overload]


def ask_confirm(action: str, message: str, **payload: Any) -> None:
    open_dialog("confirm", action=action, message=message, payload=payload)


def confirm_body(handlers: dict[str, Callable[[dict[str, Any]], None]]) -> Callable[[dict[str, Any]], None]:
    """A confirmation dialog body: runs handlers[action](payload) on Confirm, then closes."""

    def body(state: dict[str, Any]) -> None:
        st.write(state.get("message", ""))
        left, right = st.columns(2)
        if left.button(t("common.confirm"), type="primary", key="confirm_yes", width="stretch"):
            try:
                handlers[state["action"]](state.get("payload") or {})
            except AdminError as exc:
                flash(error_text(exc), "error")
            bump()
            close_dialog()
        if right.button(t("common.cancel"), key="confirm_no", width="stretch"):
            close_dialog()

    return body


# -- flash messages (survive the rerun that follows an action) ---------------------------------------------------
def flash(message: str, kind: str = "success") -> None:
    st.session_state.setdefault(FLASH, []).append((kind, message))


def page_header(title_key: str) -> None:
    """A page's title, then the messages left by the previous run's action."""
    st.title(t(title_key))
    show_flash()


def show_flash() -> None:
    for kind, message in st.session_state.pop(FLASH, []):
        {"success": st.success, "error": st.error, "warning": st.warning}.get(kind, st.info)(message)


# -- time ------------------------------------------------------------------------------------------------------
def tz_name() -> str:
    return str(config_values().get("display_timezone") or "UTC")


def tz() -> ZoneInfo:
    try:
        return ZoneInfo(tz_name())
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local(col: pd.Series) -> pd.Series:
    """UTC times → naive wall-clock times in the display zone (what tables and charts show)."""
    if col.empty:
        return col
    if not pd.api.types.is_datetime64_any_dtype(col):
        col = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
    if col.dt.tz is None:
        col = col.dt.tz_localize("UTC")
    return col.dt.tz_convert(tz()).dt.tz_localize(None)


def day_range_utc(start: date, end: date) -> tuple[datetime, datetime]:
    """[start 00:00, end+1 00:00) in the display zone, as aware UTC datetimes."""
    zone = tz()
    lo = datetime.combine(start, datetime.min.time(), zone).astimezone(UTC)
    hi = datetime.combine(end + timedelta(days=1), datetime.min.time(), zone).astimezone(UTC)
    return lo, hi


def today() -> date:
    return datetime.now(tz()).date()


def date_range(value: Any, default: tuple[date, date]) -> tuple[date, date]:
    """A st.date_input range value (possibly half-picked) → (start, end)."""
    if isinstance(value, (list, tuple)):
        if len(value) == 2:
            return value[0], value[1]
        if len(value) == 1:
            return value[0], value[0]
        return default
    if isinstance(value, date):
        return value, value
    return default


# -- formatting ------------------------------------------------------------------------------------------------
def fmt_int(n: Any) -> str:
    try:
        return f"{int(n or 0):,}"
    except (TypeError, ValueError):
        return "–"


def fmt_ms(n: Any) -> str:
    if n is None or (isinstance(n, float) and pd.isna(n)):
        return "–"
    return f"{float(n):,.0f} ms"


def fmt_pct(rate: Any) -> str:
    if rate is None or (isinstance(rate, float) and pd.isna(rate)):
        return "–"
    rate = float(rate)
    return f"{rate * 100 if rate <= 1 else rate:.1f} %"


def pages(total: int, page_size: int) -> int:
    return max(1, -(-int(total) // max(1, int(page_size))))


def pager(key: str, total: int, default_size: int = 50) -> tuple[int, int]:
    """Page-size select + page number; returns (page, page_size). Both are keyed widgets (tests set them)."""
    left, mid, right = st.columns([1, 1, 4], vertical_alignment="bottom")
    size = left.selectbox(
        t("common.page_size"), [10, 20, 50, 100, 500], index=2 if default_size == 50 else 0, key=f"{key}_size"
    )
    n_pages = pages(total, size)
    if st.session_state.get(f"{key}_page", 1) > n_pages:
        st.session_state[f"{key}_page"] = n_pages
    page = mid.number_input(t("common.page"), min_value=1, max_value=n_pages, step=1, key=f"{key}_page")
    right.caption(t("common.page_of", page=page, pages=n_pages, total=fmt_int(total)))
    return int(page), int(size)


def column_labels(df: pd.DataFrame) -> dict[str, Any]:
    """Translated headers for the API's column names (unknown columns keep their own name)."""
    return {c: t(f"col.{c}") for c in df.columns if f"col.{c}" in EN}


def selected_rows(table_key: str) -> list[int]:
    """Row positions selected in a keyed `st.dataframe(on_select="rerun")`."""
    state = st.session_state.get(table_key)
    try:
        return list(state["selection"]["rows"])  # type: ignore[index]
    except (KeyError, TypeError):
        return []
