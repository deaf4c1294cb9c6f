"""Sign-in state: where the proxy is (environment or `.env`), the session's admin client, sign in / sign out."""

from __future__ import annotations

import httpx
import streamlit as st

from dashboard import sessions
from dashboard.logic import i18n
from dashboard.logic.client import AdminClient, AdminError
from proxy_service.envfile import env_setting

DEFAULT_ADMIN_URL = "http://127.0.0.1:8080"
SESSION_STATE = ("auth", "_dialog", "_cache", "_flash", "login_token")  # what a sign-out forgets


def setting(name: str, default: str = "") -> str:
    """Environment first, then `.env` (the same reader as the proxy's)."""
    value = env_setting(name)
    return value if value is not None else default


def env_admin_url() -> str:
    return setting("KEYRACK_ADMIN_URL", DEFAULT_ADMIN_URL).rstrip("/") or DEFAULT_ADMIN_URL


def env_admin_token() -> str:
    return setting("KEYRACK_ADMIN_TOKEN", "")


def cookie_session() -> tuple[str, int] | None:
    """The signed-in browser's session from its cookie (set by a one-time sign-in link, dashboard/sessions.py),
    or None. The env token never signs a visitor in by itself: only a link `keyrack run` printed, or the token."""
    current = sessions.current()
    if current is None:
        return None
    return current.session(st.context.cookies.get(current.cookie))


@st.cache_resource(show_spinner=False)
def _http() -> httpx.Client:
    """One pooled HTTP client for every session of this dashboard process."""
    return httpx.Client(timeout=15.0, limits=httpx.Limits(max_connections=20, max_keepalive_connections=10))


def make_client(url: str, token: str) -> AdminClient:
    return AdminClient(url, token, http=_http())


def client() -> AdminClient:
    """The signed-in session's admin client."""
    auth = st.session_state.get("auth") or {}
    return make_client(auth.get("url", env_admin_url()), auth.get("token", ""))


def logged_in() -> bool:
    return bool(st.session_state.get("auth"))


def sign_in(url: str, token: str, session: tuple[str, int] | None = None) -> AdminError | None:
    """Check URL + token with one admin call; on success remember them (and the cookie's session, to revoke it on
    sign-out) and adopt the configured language. `url` is server-side configuration (KEYRACK_ADMIN_URL /
    --admin-url), never a visitor's input: the dashboard must not fetch a URL a stranger chose and show the answer."""
    try:
        cfg = make_client(url, token).config()
    except AdminError as exc:
        return exc
    st.session_state["auth"] = {"url": url.rstrip("/"), "token": token, "session": session}
    i18n.remember_default((cfg.get("values") or {}).get("language"))
    if not st.session_state.get("lang_chosen"):  # no choice of this browser's own: the configured default
        set_language(i18n.default_language())
    st.session_state["_data_version"] = st.session_state.get("_data_version", 0) + 1
    return None


def set_language(lang: str) -> None:
    """Switch the language for this run and every widget drawn after it (the entry syncs its selector)."""
    st.session_state["lang"] = lang
    st.session_state["_lang_sync"] = True


def sign_out() -> None:
    """Forget the session's token and everything fetched with it; a cookie that signed it in is revoked, so a
    reload or another tab of this browser is signed out too."""
    session = (st.session_state.get("auth") or {}).get("session")
    current = sessions.current()
    if session is not None and current is not None:
        current.revoke(session)
    for name in SESSION_STATE:
        st.session_state.pop(name, None)
