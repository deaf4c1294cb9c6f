"""The real-browser figure beside `dashboard_render`'s AppTest one: a real dashboard server (`keyrack dashboard`, as
`keyrack run` starts it) in front of the bench's proxy, and headless Chromium. Each round is a fresh browser context
(a new Streamlit session): it signs in with a one-time link (landing on Monitor, whose chart loads Plotly's
JavaScript), then clicks Trends once Monitor is drawn; the figure is the time from that click until every Trends chart
is drawn and the script run is over."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ADMIN_TOKEN, HOST, Server, _spawn, free_port
from proxy_service import dashboard_link

CHROMIUM = Path("/usr/bin/chromium")
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
# The Trends page's charts (their widget keys): the visit is over when each one is drawn.
TRENDS_CHARTS = [
    "chart_calls",
    "chart_rate",
    "chart_latency",
    "chart_tokens",
    "chart_spend",
    "chart_refusals",
    "chart_attempts",
    "chart_outcomes",
    "chart_statuses",
    "chart_by_calls",
    "chart_by_tokens",
]


MONITOR_CHART = "chart_recent"  # Monitor's own chart: drawn once Plotly's JavaScript is loaded


def start_dashboard(workdir: Path, admin_url: str) -> tuple[Server, str]:
    """A dashboard server and the key its one-time sign-in links are made with."""
    port, key = free_port(), dashboard_link.new_key()
    args = [sys.executable, "-m", "proxy_service.cli", "dashboard", "--host", HOST, "--port", str(port)]
    env = {
        "KEYRACK_ADMIN_URL": admin_url,
        "KEYRACK_ADMIN_TOKEN": ADMIN_TOKEN,
        dashboard_link.KEY_ENV: key,
        "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none",
    }
    return _spawn("dashboard", [*args, "--admin-url", admin_url], workdir, env, f"http://{HOST}:{port}"), key


def _wait_health(server: Server, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{server.url}/_stcore/health", timeout=2).text == "ok":
                return
        except httpx.HTTPError:
            pass
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard did not start:\n{server.log_tail()}")
        time.sleep(0.2)


def trends_first_visit(workdir: Path, admin_url: str, rounds: int, timeout_s: float = 180.0) -> list[float]:
    """Seconds from clicking Trends to its last chart drawn, one figure per fresh browser session."""
    from playwright.sync_api import sync_playwright

    server, key = start_dashboard(workdir, admin_url)
    figures: list[float] = []
    try:
        _wait_health(server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                for _ in range(rounds):
                    ctx = browser.new_context(viewport={"width": 1440, "height": 1200})
                    page: Any = ctx.new_page()
                    page.set_default_timeout(timeout_s * 1000)
                    page.goto(dashboard_link.sign_in_link(server.url, key))
                    page.get_by_role("link", name="Trends").wait_for()
                    page.locator(IDLE).wait_for()
                    page.locator(f".st-key-{MONITOR_CHART} .main-svg").first.wait_for()  # Monitor read, as a user does
                    started = time.perf_counter()
                    page.get_by_role("link", name="Trends").click()
                    for chart in TRENDS_CHARTS:
                        page.locator(f".st-key-{chart} .main-svg").first.wait_for()
                    page.locator(IDLE).wait_for()
                    figures.append(time.perf_counter() - started)
                    ctx.close()
            finally:
                browser.close()
    finally:
        server.stop()
    return figures


def summary(figures: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(figures), 3), "max_s": round(max(figures), 3)}


def available() -> bool:
    return CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)
