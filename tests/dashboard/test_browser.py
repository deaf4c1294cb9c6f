"""Real browser: Debian's Chromium (via Playwright) against a real `streamlit run` of the dashboard and the real
proxy. Logs in, visits every page, switches the Trends granularity, opens a key's details, runs a SQL query, and
saves a screenshot of each page to docs/screenshots/<page>.png."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.dashboard.conftest import ADMIN_TOKEN, APP, Stack

CHROMIUM = Path("/usr/bin/chromium")
ROOT = APP.parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def dashboard_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run dashboard/app.py` as `keyrack dashboard` runs it, without a token (the test types it)."""
    port = _free_port()
    env = {**os.environ, "KEYRACK_ADMIN_URL": stack.url, "KEYRACK_ADMIN_TOKEN": "", "PYTHONUNBUFFERED": "1"}
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(APP),
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
                "--server.fileWatcherType",
                "none",
                "--client.toolbarMode",
                "minimal",
            ],
            cwd=tmp_path_factory.mktemp("cwd"),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _idle(page: object, timeout: float = 20_000) -> None:
    page.wait_for_timeout(300)  # type: ignore[attr-defined]  # let a rerun start before waiting for its end
    page.locator(IDLE).wait_for(timeout=timeout)  # type: ignore[attr-defined]


def _shot(page: object, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    _idle(page)
    page.wait_for_timeout(400)  # type: ignore[attr-defined]  # charts and tables finish drawing
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_dashboard_in_a_real_browser(dashboard_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or `apt-get install chromium`)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1200},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(20_000)
            page.goto(f"{dashboard_url}/trends")

            # Login gate, even for a page asked for by URL: a wrong token is refused with a message, the right
            # one gets in.
            expect(page.get_by_role("heading", name="Sign in to Keyrack")).to_be_visible()
            expect(page.get_by_role("heading", name="Trends")).to_have_count(0)
            page.get_by_label("Admin token").fill("wrong-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("The admin token was not accepted")).to_be_visible()
            page.get_by_label("Admin token").fill(ADMIN_TOKEN)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Monitor").click()
            expect(page.get_by_role("heading", name="Monitor")).to_be_visible()
            expect(page.get_by_text("Calls · last 24 h")).to_be_visible()
            _shot(page, "monitor")

            # A key's details: tick the first row of the active-keys table, then "Details".
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.scroll_into_view_if_needed()
            expect(grid).to_be_visible()
            page.wait_for_timeout(500)
            box = grid.bounding_box()
            assert box is not None
            page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)  # the row-selection checkbox of row 1
            _idle(page)
            page.get_by_role("button", name="Details").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("Usage by model")).to_be_visible()
            _shot(page, "key_details")
            dialog.get_by_role("button", name="Close").first.click()
            expect(dialog).to_have_count(0)

            # Trends: switch the granularity to days.
            page.get_by_role("link", name="Trends").click()
            expect(page.get_by_role("heading", name="Trends")).to_be_visible()
            expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(4)
            page.locator('[data-testid="stButtonGroup"]').get_by_text("Day", exact=True).click()
            _idle(page)
            expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(4)
            expect(page.get_by_text("Top models")).to_be_visible()
            _shot(page, "trends")

            page.get_by_role("link", name="Error logs").click()
            expect(page.get_by_role("heading", name="Error logs")).to_be_visible()
            expect(page.get_by_text("matching entries")).to_be_visible()
            _shot(page, "error_logs")

            page.get_by_role("link", name="Config").click()
            expect(page.get_by_role("heading", name="Gemini upstream & pool")).to_be_visible()
            _shot(page, "config")

            # SQL: run the default example query.
            page.get_by_role("link", name="SQL").click()
            expect(page.get_by_role("heading", name="SQL", exact=True)).to_be_visible()
            page.get_by_role("button", name="Run").click()
            expect(page.get_by_text(" rows · ")).to_be_visible()
            _shot(page, "sql")
        finally:
            ctx.close()
