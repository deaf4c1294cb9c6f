"""Keyrack dashboard entry: every page registered on every run, the sign-in guard (once, here), shared chrome.

Run with `keyrack dashboard` (`streamlit run dashboard/server.py`: this script behind the Host/Origin guard and the
sign-in link route). It talks to the proxy only through the admin API at KEYRACK_ADMIN_URL, with the admin token a
visitor types, or with KEYRACK_ADMIN_TOKEN for a browser signed in by a one-time link (`keyrack run` prints it).

Every page is known to `st.navigation` on every run, signed in or not, so `/trends` resolves to Trends on a fresh
tab or after F5; while signed out the login form is drawn in place of the page asked for, and after sign-in the
same URL shows that page. A new page is one line in PAGES.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from streamlit.navigation.page import StreamlitPage

if __package__ in (None, "") and "dashboard" not in sys.modules:  # `streamlit run dashboard/app.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.logic import alerts_view as av
from dashboard.logic import auth, cache, dialogs, fmt, i18n, times
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import LANGUAGES, carry_widgets, t, wkey

HERE = Path(__file__).resolve().parent
AUTO_REFRESH = [0, 5, 15, 30, 60]
# An empty date field shows the browser locale's mask (yyyy-mm-dd) and st.date_input takes no placeholder: in
# Chinese the mask reads 年-月-日 (the segments stay where they are, to be clicked and typed into).
DATE_MASK_ZH = "".join(
    f'[data-testid="stDateInput"] span[data-placeholder="true"][data-type="{part}"]::after {{ content: "{word}"; }}'
    for part, word in (("year", "年"), ("month", "月"), ("day", "日"))
)
DATE_MASK_ZH += (
    '[data-testid="stDateInput"] span[data-placeholder="true"] { font-size: 0 !important; }'
    '[data-testid="stDateInput"] span[data-placeholder="true"]::after { font-size: 0.875rem; }'
)
# (file under screens/, title key, icon). The URL of a page is its file name without ".py" (the first is also "/").
PAGES = [
    ("monitor.py", "nav.monitor", ":material/monitor_heart:"),
    ("trends.py", "nav.trends", ":material/insights:"),
    ("forecast.py", "nav.forecast", ":material/query_stats:"),
    ("explore.py", "nav.explore", ":material/pivot_table_chart:"),
    ("error_logs.py", "nav.errors", ":material/error:"),
    ("alerts.py", "nav.alerts", ":material/notifications:"),
    ("clients.py", "nav.clients", ":material/group:"),
    ("config.py", "nav.config", ":material/settings:"),
    ("sql.py", "nav.sql", ":material/database:"),
]

st.set_page_config(page_title="Keyrack", page_icon=str(HERE / "favicon.png"), layout="wide")
if "lang" not in st.session_state:  # a new session (first visit, reload, new tab): this browser's choice or the default
    own = i18n.chosen_language(st.query_params.get(i18n.PARAM), st.context.cookies.get(i18n.COOKIE))
    st.session_state["lang"] = own or i18n.default_language()
    st.session_state["lang_chosen"] = own is not None
if st.session_state.pop("_lang_sync", False) or "lang_select" not in st.session_state:
    st.session_state["lang_select"] = st.session_state["lang"]


def _language_changed() -> None:
    """Runs before the script: every widget of this run is drawn in the new language."""
    old, new = st.session_state["lang"], st.session_state["lang_select"]
    carry_widgets(old, new)
    st.session_state["lang"] = new
    st.session_state["lang_chosen"] = True


def language_switch() -> None:
    st.sidebar.selectbox(
        t("chrome.language"),
        list(LANGUAGES),
        format_func=lambda code: LANGUAGES.get(code, code),
        key="lang_select",
        on_change=_language_changed,
        help=t("chrome.language_help"),
    )
    lang = st.session_state["lang"]
    if lang == "zh":
        st.html(f"<style>{DATE_MASK_ZH}</style>")
    if st.session_state.get("lang_chosen") and st.context.cookies.get(i18n.COOKIE) != lang:
        st.sidebar.html(i18n.cookie_script(lang), unsafe_allow_javascript=True)  # remembered for reloads and tabs


def navigation() -> StreamlitPage:
    pages = [
        st.Page(HERE / "screens" / file, title=t(title), icon=icon, url_path=Path(file).stem, default=i == 0)
        for i, (file, title, icon) in enumerate(PAGES)
    ]
    return st.navigation(pages, position="top" if auth.logged_in() else "hidden")


def login_gate() -> None:
    """Sign in with the env token when the browser holds a session cookie from a one-time sign-in link; otherwise
    (or when it fails) ask for the token. The admin URL is server-side configuration, not a form field. Stops the
    run."""
    url = auth.env_admin_url()
    problem: AdminError | None = st.session_state.pop("login_problem", None)
    session = auth.cookie_session()
    if session is not None and problem is None:
        problem = auth.sign_in(url, auth.env_admin_token(), session)
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
        problem = auth.sign_in(url, token.strip())
        if problem is None:
            st.rerun()  # same URL: the page asked for is drawn now
    if problem is not None:
        if problem.kind == "unauthorized":
            st.error(t("login.wrong_token"), icon=":material/lock:")
        elif problem.kind in ("unreachable", "timeout"):
            st.error(t("login.unreachable", url=url), icon=":material/cloud_off:")
        elif problem.status == 503:
            st.error(t("login.no_token_configured"), icon=":material/lock:")
        else:
            st.error(fmt.error_text(problem))
    st.stop()


def chrome() -> None:
    side = st.sidebar
    side.title(f":material/key: {t('app.title')}")
    side.caption(t("app.tagline"))
    try:
        cache.cached(cache.api().config, ttl=30.0)()
        side.caption(f":green[●] {t('chrome.connected', url=cache.api().base_url)}")
    except AdminError as exc:
        if exc.kind == "unauthorized":
            auth.sign_out()
            st.session_state["login_problem"] = exc
            st.rerun()
        side.caption(f":red[●] {t('chrome.disconnected', msg=fmt.error_text(exc))}")
    if side.button(t("chrome.refresh"), icon=":material/refresh:", key="refresh", width="stretch"):
        cache.bump()
    side.selectbox(
        t("chrome.auto_refresh"),
        AUTO_REFRESH,
        key=wkey("auto_refresh"),
        format_func=lambda s: t("chrome.every_s", n=s) if s else t("chrome.auto_off"),
    )
    language_switch()
    side.caption(t("chrome.timezone", tz=times.tz_name()))
    try:  # the firing-count badge on every page (cached briefly: one small call per 10 s at most)
        firing = av.badge(cache.cached(cache.api().alerts_active, ttl=10.0)())
        if firing:
            side.markdown(firing)
    except AdminError:
        pass
    if side.button(t("chrome.logout"), icon=":material/logout:", key="logout", width="stretch"):
        auth.sign_out()
        st.rerun()


page = navigation()
if not auth.logged_in():
    language_switch()
    login_gate()
chrome()
if st.session_state.get("_page") != page.url_path:  # a dialog belongs to the page that opened it
    st.session_state["_page"] = page.url_path
    st.session_state.pop(dialogs.DIALOG, None)
page.run()
