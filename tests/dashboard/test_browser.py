"""Real browser: Debian's Chromium (via Playwright) against a real dashboard server (conftest's `dashboard`, started
as `keyrack run` starts it) and the real proxy. One browser for the module; each test opens fresh contexts (fresh
sessions, no cookies).

Covers what AppTest cannot: URLs (deep links, reload), what Plotly draws (ticks, legend colours), the language
switch as a reader sees it, requests to hosts other than 127.0.0.1, and the README screenshots. Screenshots go to a
temporary directory, or to KEYRACK_SCREENSHOTS (what `make screenshots` sets to docs/screenshots)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import ADMIN_TOKEN, APP, Stack

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = APP.parents[1] / "docs" / "screenshots"  # the README's pictures: written only by explicit make targets
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
pytestmark = pytest.mark.timeout(600)  # a real browser on a shared 2-core machine: minutes, not the suite's 120 s
PAGES = {
    "": "Monitor",
    "trends": "Trends",
    "error_logs": "Error logs",
    "config": "Config",
    "sql": "SQL",
    "clients": "Clients",
}
# Words that stay as they are in Chinese: names, units, protocol and product terms, the seeded data.
ALLOWED = {
    "keyrack",
    "google",
    "client",  # the SQL column requests.client, named in the Config page's client-labels note
    "gemini",
    "flash",
    "pro",
    "sql",
    "api",
    "url",
    "token",
    "tokens",
    "ms",
    "utc",
    "rpm",
    "rpd",
    "tpm",
    "json",
    "csv",
    "parquet",
    "http",
    "shift",  # the keyboard key, as printed on it (the wide-table hint: Shift + 滚轮)
    "https",
    "admin",
    "keyrack_admin_token",
    "duckdb",
    "select",
    "from",
    "where",
    "group",
    "order",
    "by",
    "limit",
    "count",
    "as",
    "and",
    "desc",
    "asc",
    "on",
    "now",
    "interval",
    "requests",
    "attempts",
    "error_logs",
    "keys",
    "model",
    "outcome",
    "status",
    "key_id",
    "project",
    "ts",
    "alpha",
    "beta",
    "gamma",
    "known",
    "bad",
    "test",  # the seeded calls' client id
    "id",
    "ids",
    "max",
    "min",
    "avg",
    "sum",
    "quantile_cont",
    "latency_ms",
    "total_tokens",
    "date_trunc",
    "hour",
    "day",
    "cast",
    "int",
    "double",
    "varchar",
    "timestamp",
    "bigint",
    "boolean",
    "float",
    "integer",
    "stream",
    "surface",
    "operation",
    "filter",
    "case",
    "when",
    "then",
    "else",
    "end",
    "round",
    "not",
    "null",
    "is",
    "in",
    "or",
    "like",
    "having",
    "distinct",
    "with",
    "over",
    "partition",
    "rows",
    "upstream_status",
    "quota_id",
    "error_type",
    "message",
    "upstream_body",
    "request_id",
    "prompt_tokens",
    "output_tokens",
    "ttfb_ms",
    "attempt",
    "label",
    "secret",
    "created_at",
    "last_used_at",
    "request_bytes",
    "response_bytes",
    "error_status",
    "error_message",
    "client_id",
    "stack_trace",
    "request_body",
    "ok",
    "enum",
    "str",
    "localhost",
    "deploy",
    "mape",  # the forecast's error measure, and the names of its models
    "mstl",
    "autoets",
    "statsforecast",
    "apprise",  # the alert channels' library and the services (URL schemes) it reaches
    "mailto",
    "slack",
    "discord",
    "tgram",
    "dingtalk",
    "wecombot",
    "feishu",
    "webhook",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or `apt-get install chromium`)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a shared 2-core machine: slow, not wrong
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shots_dir()


class Tab:
    """One browser context (a fresh Streamlit session) with the requests it made to other hosts."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.ctx = browser.new_context(viewport={"width": 1440, "height": 1200})
        self.page = self.ctx.new_page()
        self.page.set_default_timeout(60_000)
        self.foreign: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", self._request)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))

    def _request(self, request: Any) -> None:
        host = re.sub(r"^[a-z]+://([^/:]+).*$", r"\1", request.url)
        if request.url.startswith(("http", "ws")) and host not in ("127.0.0.1", "localhost"):
            self.foreign.append(request.url)

    def goto(self, path: str) -> None:
        self.page.goto(f"{self.base}/{path}")
        self.idle()

    def open_link(self, link: str) -> None:
        """A one-time sign-in link: the dashboard sets its cookie and lands on Monitor, signed in."""
        self.page.goto(link)
        self.idle()

    def idle(self) -> None:
        self.page.wait_for_timeout(300)  # let a rerun start before waiting for its end
        self.page.locator(IDLE).wait_for(timeout=60_000)

    def sign_in(self, token: str = ADMIN_TOKEN) -> None:
        from playwright.sync_api import expect

        expect(self.page.get_by_role("heading", name="Sign in to Keyrack")).to_be_visible()
        self.page.get_by_label("Admin token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.idle()

    def heading(self, name: str) -> Any:
        return self.page.get_by_role("heading", name=name, exact=True)

    def shot(self, shots: Path, name: str) -> None:
        self.idle()
        self.page.wait_for_timeout(500)  # charts and tables finish drawing
        self.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def close(self) -> None:
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        self.ctx.close()


@functools.cache
def shots_dir() -> Path:
    """Where a test run's screenshots go: KEYRACK_SCREENSHOTS (`make screenshots`), else a temporary directory of
    this run's own (never a fixed name: runs of several checkouts and xdist workers share the temp dir)."""
    target = os.environ.get("KEYRACK_SCREENSHOTS")
    path = Path(target) if target else Path(tempfile.mkdtemp(prefix="keyrack-screenshots-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _idle(page: Any, timeout: float = 60_000) -> None:
    """Wait for the script run a click started to finish (for tests that drive a bare Playwright page)."""
    page.wait_for_timeout(300)
    page.locator(IDLE).wait_for(timeout=timeout)


def _shot(page: Any, name: str) -> None:
    _idle(page)
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots_dir() / f"{name}.png"), full_page=True)


@contextlib.contextmanager
def tab(browser: Any, base: str) -> Iterator[Tab]:
    t = Tab(browser, base)
    try:
        yield t
    except BaseException:
        with contextlib.suppress(Exception):  # what the page showed, for the failure report
            print(
                t.page.url,
                t.page.evaluate(
                    "() => Array.from(new Set(Array.from(document.querySelectorAll('[data-testid]')).map(e => e.dataset.testid))).join(' ')"
                ),
            )
        raise
    finally:
        t.close()


def test_deep_link_and_reload_on_every_page(browser: Any, dashboard_url: str) -> None:
    """A fresh tab on /<page> shows the login in place (no "Page not found"); after sign-in the same page; a reload
    (a new Streamlit session) keeps the URL and shows the login in place again, then the page once signed in (checked
    on one page: the others differ only by URL). The first deep link is the server's first run."""
    from playwright.sync_api import expect

    for path, title in [*list(PAGES.items())[1:], ("", "Monitor")]:
        with tab(browser, dashboard_url) as t:
            t.goto(path)
            expect(t.page.get_by_text("Page not found")).to_have_count(0)
            expect(t.heading(title)).to_have_count(0)
            t.sign_in()
            expect(t.heading(title)).to_be_visible()
            assert t.page.url.rstrip("/") == f"{dashboard_url}/{path}".rstrip("/")
            t.page.reload()
            t.idle()
            expect(t.page.get_by_text("Page not found")).to_have_count(0)
            expect(t.page.get_by_role("heading", name="Sign in to Keyrack")).to_be_visible()
            assert t.page.url.rstrip("/") == f"{dashboard_url}/{path}".rstrip("/")
            if path == "trends":
                t.sign_in()
                expect(t.heading(title)).to_be_visible()


@pytest.fixture
def cooling_pair(stack: Stack) -> Iterator[None]:
    """(project alpha, gemini-2.5-pro) cools for five minutes, as after a per-minute 429 from Google."""
    from proxy_service.pool import Cooldown

    stack.gateway.pool.cooldowns[("alpha", "gemini-2.5-pro")] = Cooldown(time.time() + 300, "minute", "RPM")
    try:
        yield
    finally:
        stack.gateway.pool.cooldowns.pop(("alpha", "gemini-2.5-pro"), None)


def test_wrong_token_then_every_page_and_screenshots(
    browser: Any, dashboard_url: str, shots: Path, cooling_pair: None
) -> None:
    from playwright.sync_api import expect

    with tab(browser, dashboard_url) as t:
        t.goto("")
        t.sign_in("wrong-token")
        expect(t.page.get_by_text("The admin token was not accepted")).to_be_visible()
        t.sign_in()
        expect(t.heading("Monitor")).to_be_visible()
        expect(t.page.get_by_text("Calls · last 24 h")).to_be_visible()
        expect(t.heading("Pool headroom")).to_be_visible()  # the cooling pair is in it, on top (AppTest checks rows)
        expect(t.page.get_by_text(re.compile(r"\(project, model\) pairs · 1 cooling · tightest first"))).to_be_visible()
        t.shot(shots, "monitor")

        # A key's details: tick the first row of the active-keys table, then "Details".
        grid = t.page.locator('.st-key-tbl_active [data-testid="stDataFrame"]')
        grid.scroll_into_view_if_needed()
        expect(grid).to_be_visible()
        t.page.wait_for_timeout(500)
        box = grid.bounding_box()
        assert box is not None
        t.page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)  # the row-selection checkbox of row 1
        t.idle()
        t.page.get_by_role("button", name="Details").click()
        dialog = t.page.get_by_role("dialog")
        expect(dialog.get_by_text("Usage by model")).to_be_visible()
        t.shot(shots, "key_details")
        dialog.get_by_role("button", name="Close").first.click()
        expect(dialog).to_have_count(0)

        t.page.get_by_role("link", name="Trends").click()
        expect(t.heading("Trends")).to_be_visible()
        expect(t.page.locator('[data-testid="stPlotlyChart"]')).to_have_count(11)
        expect(t.page.get_by_text("Top models")).to_be_visible()
        t.shot(shots, "trends")

        t.page.get_by_role("link", name="Error logs").click()
        expect(t.page.get_by_text("matching entries")).to_be_visible()
        t.shot(shots, "error_logs")

        t.page.get_by_role("link", name="Config").click()
        expect(t.heading("Gemini upstream & pool")).to_be_visible()
        t.shot(shots, "config")

        t.page.get_by_role("link", name="SQL").click()
        expect(t.heading("SQL")).to_be_visible()
        t.page.get_by_role("button", name="Run").click()
        expect(t.page.get_by_text(re.compile(r" rows? · "))).to_be_visible()
        t.shot(shots, "sql")


def _ticks(chart: Any, pattern: str) -> list[str]:
    """The x tick labels of a chart, once Plotly has drawn ones that match `pattern` (after a rerun)."""
    from playwright.sync_api import expect

    expect(chart.locator("g.xtick text").first).to_have_text(re.compile(pattern))
    return list(chart.evaluate("el => Array.from(el.querySelectorAll('g.xtick text')).map(x => x.textContent)"))


def _legend_colours(chart: Any) -> dict[str, str]:
    return dict(
        chart.evaluate(
            """el => Array.from(el.querySelectorAll('g.legend g.traces')).map(g => [
                g.querySelector('text.legendtext').textContent,
                getComputedStyle(g.querySelector('path.legendundefined, g.legendpoints path')).fill])"""
        )
    )


def test_trends_single_bucket_and_one_colour_per_model(browser: Any, dashboard_url: str) -> None:
    from playwright.sync_api import expect

    with tab(browser, dashboard_url) as t:
        t.goto("trends")
        t.sign_in()
        expect(t.heading("Trends")).to_be_visible()
        charts = t.page.locator('[data-testid="stPlotlyChart"]')
        expect(charts).to_have_count(11)
        expect(charts.nth(10).locator("g.legend g.traces").first).to_be_visible()

        # The default breakdown is by model: both breakdown charts give each model the same colour.
        by_calls, by_tokens = _legend_colours(charts.nth(9)), _legend_colours(charts.nth(10))
        assert len(by_calls) >= 3 and by_calls == by_tokens, (by_calls, by_tokens)
        assert len(set(by_calls.values())) == len(by_calls)

        # Month granularity over a week: all the data is one bucket. The axis still spans the range, ticks whole.
        t.page.locator('[data-testid="stButtonGroup"]').get_by_text("Month", exact=True).click()
        t.idle()
        ticks = _ticks(charts.first, r"[A-Z][a-z]{2} \d{4}")
        assert len(ticks) == 1, ticks  # one month, one tick: no zoom into the bucket
        t.page.locator('[data-testid="stButtonGroup"]').get_by_text("Hour", exact=True).click()
        t.idle()
        ticks = _ticks(charts.first, r"\d\d:00")
        assert not any(re.search(r"\d:\d\d:\d\d|\.\d", x) for x in ticks), ticks


# Table columns that quote what others wrote, as recorded: the upstream's error messages (Google writes English).
QUOTED = ["消息", "错误消息"]


def _visible_text(t: Tab) -> str:
    """The app's text as read, without icon ligatures (Material icons are words in an icon font); plus what a
    reader also sees outside the DOM's plain text: the canvas tables' cells and headers (their accessible copy,
    less what the canvas draws otherwise: a checkbox for true/false, a link's words for its address), the charts'
    titles, ticks, legends and annotations (SVG) and toolbar tooltips, and the placeholders of empty visible inputs."""
    return str(
        t.page.evaluate(
            """QUOTED => { const app = document.querySelector('[data-testid="stApp"]').cloneNode(true);
                app.querySelectorAll('[data-testid="stIconMaterial"], [role="img"][translate="no"], '
                    + '[data-testid="stSkipToContent"], [data-testid="stDataFrame"] table, [data-testid="stCode"]')
                    .forEach(e => e.remove());  // (code blocks quote recorded payloads and SQL verbatim)
                document.body.appendChild(app);  // (in the page, so that its styles apply to the copy)
                const text = [];
                app.querySelectorAll('*').forEach(e => { if (getComputedStyle(e).fontSize === '0px') {
                    const shown = getComputedStyle(e, '::after').content;  // drawn in place of the text
                    if (shown && shown !== 'none') text.push(shown);
                    e.textContent = ''; } });
                text.push(app.innerText); app.remove();
                document.querySelectorAll('[data-testid="stDataFrame"]').forEach(grid => {
                    const quoted = new Set(Array.from(grid.querySelectorAll('th'))
                        .filter(h => QUOTED.includes(h.textContent.trim())).map(h => h.ariaColIndex));
                    grid.querySelectorAll('th, td').forEach(c => {
                        const drawn = !(c.tagName === 'TD' && (quoted.has(c.ariaColIndex)
                            || /^(true|false)$/.test(c.textContent) || /^(error_logs|trends)([?]|$)/.test(c.textContent)));
                        if (drawn) text.push(c.textContent); }); });
                document.querySelectorAll('[data-testid="stPlotlyChart"] svg text')
                    .forEach(e => text.push(e.textContent));
                document.querySelectorAll('[data-testid="stPlotlyChart"] .modebar-btn[data-title][data-attr]')
                    .forEach(e => text.push(e.dataset.title));  // Plotly's toolbar tooltips (not Streamlit's two)
                document.querySelectorAll('input[placeholder], textarea[placeholder]').forEach(e => {
                    const shown = e.offsetParent !== null && e.value === ''
                        && !/rgba\\(.*, 0\\)$/.test(getComputedStyle(e, '::placeholder').color);
                    if (shown) text.push(e.placeholder); });
                document.querySelectorAll('[data-baseweb="popover"], [data-testid="stPopoverBody"]')
                    .forEach(e => text.push(e.innerText));
                return text.join('\\n'); }""",
            QUOTED,
        )
    )


# Identifiers are data, not English: key ids (k_3f9a…), masked secrets (AIza…c0de), hex request and error ids.
IDS = re.compile(r"\bk_[0-9a-f]{6,}\b|\bAIza\S*|\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b")


def _english_words(text: str) -> set[str]:
    words = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z_]{2,}", IDS.sub(" ", text))}
    return {w for w in words if w not in ALLOWED and not w.startswith("gemini")}


def _english_left(t: Tab, typed: frozenset[str] = frozenset()) -> list[str]:
    """The English words a page shows once drawn: waits (generously) for them to go, returns those that stay.
    `typed`: words of names operators typed (data, shown as typed)."""
    deadline = time.monotonic() + 30
    while True:
        t.idle()
        leftover = _english_words(_visible_text(t)) - typed
        if not leftover or time.monotonic() > deadline:
            return sorted(leftover)
        t.page.wait_for_timeout(500)


# (link, heading) of every page in Chinese, in the navigation's order.
PAGES_ZH = [
    ("趋势", "趋势"),
    ("预测", "预测"),
    ("多维分析", "多维分析"),
    ("错误日志", "错误日志"),
    ("告警", "告警"),
    ("客户端", "客户端"),
    ("配置", "配置"),
    ("SQL 查询", "SQL 查询"),
]


@pytest.fixture
def alert_state(stack: Stack) -> Iterator[None]:
    """Something on every Alerts tab: a firing rule, a channel, a silence, history (and the default rules)."""
    from tests.dashboard.test_alerts_page import evaluate

    rule = stack.admin(
        "POST",
        "/alerts/rules",
        json={"name": "密钥在位", "metric": "active_keys", "op": ">", "threshold": 0, "window_s": 60},
    )
    channel = stack.admin("POST", "/alerts/channels", json={"name": "运维", "url": "json://127.0.0.1:9/"})
    silence = stack.admin(
        "POST", "/alerts/silences", json={"rule_id": rule["id"], "duration_s": 3600, "comment": "维护"}
    )
    evaluate(stack)
    try:
        yield
    finally:
        stack.admin("DELETE", f"/alerts/silences/{silence['id']}")
        stack.admin("DELETE", f"/alerts/channels/{channel['id']}")
        stack.admin("DELETE", f"/alerts/rules/{rule['id']}")
        evaluate(stack)


def _open_first_row(t: Tab, table: str, button: str) -> None:
    """Tick the first row of a canvas table, then press the row action `button`: its dialog opens."""
    from playwright.sync_api import expect

    grid = t.page.locator(f'{table} [data-testid="stDataFrame"]')
    grid.scroll_into_view_if_needed()
    expect(grid).to_be_visible()
    box = grid.bounding_box()
    assert box is not None
    t.page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)  # the row-selection checkbox of row 1
    t.idle()
    t.page.get_by_role("button", name=button, exact=True).first.click()
    expect(t.page.get_by_role("dialog")).to_be_visible()
    t.idle()


def _sign_in_zh(page: Any) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="登录 Keyrack")).to_be_visible()
    page.get_by_label("管理令牌").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="登录", exact=True).click()
    _idle(page)


def _typed_names(stack: Stack) -> frozenset[str]:
    """The words of the alert rule names operators typed (other tests' rules live on in the history): data, not
    the dashboard's words. The shipped rules' names are the dashboard's: they are translated."""
    history = stack.admin("GET", "/alerts/history")["items"]
    names = [h.get("rule") or "" for h in history if not str(h.get("rule_id") or "").startswith("default-")]
    names += [r["name"] for r in stack.admin("GET", "/alerts/rules")["items"] if not r["id"].startswith("default-")]
    return frozenset(w.lower() for name in names for w in re.findall(r"[A-Za-z][A-Za-z_]{2,}", name))


def test_language_switch_leaves_no_english(
    browser: Any, dashboard_url: str, shots: Path, cooling_pair: None, alert_state: None, stack: Stack
) -> None:
    """Switch to Chinese once; every page, its tables, charts, tabs and popovers show no English word; the choice
    survives a reload and a new tab of the same browser."""
    from playwright.sync_api import expect

    with tab(browser, dashboard_url) as t:
        t.goto("")
        t.sign_in()
        expect(t.heading("Monitor")).to_be_visible()
        t.page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').last.click()
        t.page.get_by_role("option", name="简体中文").click()
        t.idle()
        expect(t.heading("监控")).to_be_visible()
        t.idle()  # the heading comes first in the run: wait until the whole page is drawn in Chinese
        problems: dict[str, list[str]] = {}

        typed = _typed_names(stack)

        def check(where: str) -> None:
            if leftover := _english_left(t, typed):
                problems[where] = leftover

        # Right after the switch, with no further click: the page settles in Chinese by itself (a language applied
        # only one rerun later never does). Waiting for it lets the grid's headers catch up with the new run.
        check("监控")
        t.shot(shots, "monitor_zh")
        _open_first_row(t, ".st-key-tbl_active", "详情")  # a key's details dialog
        check("监控 · 密钥详情")
        t.page.get_by_role("dialog").get_by_role("button", name="关闭").first.click()
        expect(t.page.get_by_role("dialog")).to_have_count(0)

        for link, title in PAGES_ZH:
            t.page.get_by_role("link", name=link, exact=True).click()
            expect(t.heading(title)).to_be_visible()
            check(title)
            if title == "多维分析":  # the filter popover and its value picker
                t.page.get_by_role("button", name=re.compile("筛选")).click()
                expect(t.page.get_by_text("筛选维度")).to_be_visible()
                check(f"{title} · 筛选")
                t.page.keyboard.press("Escape")
            if title == "错误日志":  # an entry's details dialog
                _open_first_row(t, ".st-key-tbl_errors", "详情")
                check(f"{title} · 详情")
                t.page.keyboard.press("Escape")
                expect(t.page.get_by_role("dialog")).to_have_count(0)
            if title == "告警":  # every tab
                for name in ("通知渠道", "静默", "历史", "规则"):
                    t.page.get_by_role("tab", name=name).click()
                    check(f"{title} · {name}")
        assert not problems, "\n".join(f"{where}: {words}" for where, words in problems.items())
        t.page.get_by_role("link", name="预测", exact=True).click()
        expect(t.heading("预测")).to_be_visible()

        # A reload is a new session: the sign-in form and then the page are still in Chinese.
        t.page.reload()
        t.idle()
        assert not _english_left(t), "the sign-in form after a reload"
        _sign_in_zh(t.page)
        expect(t.heading("预测")).to_be_visible()
        assert not _english_left(t), "Forecast after a reload"

        # So is a new tab of the same browser, opened on another page.
        other = t.ctx.new_page()
        other.set_default_timeout(60_000)
        other.goto(f"{dashboard_url}/alerts")
        _idle(other)
        _sign_in_zh(other)
        expect(other.get_by_role("heading", name="告警", exact=True)).to_be_visible()
