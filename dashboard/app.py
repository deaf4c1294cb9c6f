"""Keyrack dashboard entry: login gate, shared chrome (title, connection, refresh, language) and navigation.

Run with `keyrack dashboard` (or `streamlit run dashboard/app.py`). It talks to the proxy only through the admin
API at KEYRACK_ADMIN_URL with KEYRACK_ADMIN_TOKEN (environment or `.env`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

if __package__ in (None, "") and "dashboard" not in sys.modules:  # `streamlit run dashboard/app.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard import alerts_view as av
from dashboard import ui
from dashboard.client import AdminError
from dashboard.i18n import LANGUAGES, t

HERE = Path(__file__).resolve().parent
AUTO_REFRESH = [0, 5, 15, 30, 60]

st.set_page_config(page_title="Keyrack", page_icon=":material/key:", layout="wide")
st.session_state.setdefault("lang", "en")
if st.session_state.pop("_lang_sync", False) or "lang_select" not in st.session_state:
    st.session_state["lang_select"] = st.session_state["lang"]


def _language_changed() -> None:
    st.session_state["lang"] = st.session_state["lang_select"]
    st.session_state["lang_chosen"] = True


def language_switch() -> None:
    st.sidebar.selectbox(
        t("chrome.language"),
        list(LANGUAGES),
        format_func=lambda code: LANGUAGES.get(code, code),
        key="lang_select",
        on_change=_language_changed,
    )


def login_gate() -> None:
    """Sign in with the env token when there is one and the dashboard listens on loopback; otherwise (or when it
    fails) ask for the token. The admin URL is server-side configuration, not a form field."""
    url = ui.env_admin_url()
    problem: AdminError | None = st.session_state.pop("login_problem", None)
    env_token = ui.env_admin_token()
    if env_token and ui.auto_sign_in_allowed() and not st.session_state.get("login_tried_env"):
        st.session_state["login_tried_env"] = True
        problem = ui.sign_in(url, env_token)
        if problem is None:
            st.rerun()

    st.title(t("login.title"))
    st.caption(t("login.intro"))
    with st.form("login", border=True):
        token = st.text_input(t("login.token"), type="password", key="login_token")
        submitted = st.form_submit_button(t("login.submit"), type="primary")
    if submitted:
        if not token.strip():
            st.warning(t("login.empty"))
            st.stop()
        problem = ui.sign_in(url, token.strip())
        if problem is None:
            st.rerun()
    if problem is not None:
        if problem.kind == "unauthorized":
            st.error(t("login.wrong_token"), icon=":material/lock:")
        elif problem.kind in ("unreachable", "timeout"):
            st.error(t("login.unreachable", url=url), icon=":material/cloud_off:")
        elif problem.status == 503:
            st.error(t("login.no_token_configured"), icon=":material/lock:")
        else:
            st.error(ui.error_text(problem))
    st.stop()


def chrome() -> None:
    side = st.sidebar
    side.title(f":material/key: {t('app.title')}")
    side.caption(t("app.tagline"))
    try:
        ui.fetch("config", ttl=30.0)
        side.caption(f":green[●] {t('chrome.connected', url=ui.client().base_url)}")
    except AdminError as exc:
        if exc.kind == "unauthorized":
            ui.sign_out()
            st.session_state["login_problem"] = exc
            st.rerun()
        side.caption(f":red[●] {t('chrome.disconnected', msg=ui.error_text(exc))}")
    if side.button(t("chrome.refresh"), icon=":material/refresh:", key="refresh", width="stretch"):
        ui.bump()
    side.selectbox(
        t("chrome.auto_refresh"),
        AUTO_REFRESH,
        key="auto_refresh",
        format_func=lambda s: t("chrome.every_s", n=s) if s else t("chrome.auto_off"),
    )
    language_switch()
    side.caption(t("chrome.timezone", tz=ui.tz_name()))
    try:  # the firing-count badge on every page (cached briefly: one small call per 10 s at most)
        firing = av.badge(ui.fetch("alerts_active", ttl=10.0))
        if firing:
            side.markdown(firing)
    except AdminError:
        pass
    if side.button(t("chrome.logout"), icon=":material/logout:", key="logout", width="stretch"):
        ui.sign_out()
        st.rerun()


if not ui.logged_in():
    # The login form is the only page until sign-in: calling st.navigation here also keeps Streamlit from
    # serving dashboard/pages/*.py directly by URL (its pages/ directory convention) to a visitor not signed in.
    language_switch()
    st.navigation([st.Page(login_gate, title=t("login.submit"), icon=":material/login:")], position="hidden").run()
    st.stop()

chrome()
page = st.navigation(
    [
        st.Page(HERE / "pages" / "monitor.py", title=t("nav.monitor"), icon=":material/monitor_heart:", default=True),
        st.Page(HERE / "pages" / "trends.py", title=t("nav.trends"), icon=":material/insights:"),
        st.Page(HERE / "pages" / "forecast.py", title=t("nav.forecast"), icon=":material/query_stats:"),
        st.Page(HERE / "pages" / "explore.py", title=t("nav.explore"), icon=":material/pivot_table_chart:"),
        st.Page(HERE / "pages" / "error_logs.py", title=t("nav.errors"), icon=":material/error:"),
        st.Page(HERE / "pages" / "alerts.py", title=t("nav.alerts"), icon=":material/notifications:"),
        st.Page(HERE / "pages" / "config.py", title=t("nav.config"), icon=":material/settings:"),
        st.Page(HERE / "pages" / "sql.py", title=t("nav.sql"), icon=":material/database:"),
    ],
    position="top",
)
if st.session_state.get("_page") != page.url_path:  # a dialog belongs to the page that opened it
    st.session_state["_page"] = page.url_path
    st.session_state.pop(ui.DIALOG, None)
page.run()
