"""Real browser (Debian's Chromium via Playwright) on Explore: controls writing the view to the URL, a drill-down
from a pivot cell to its calls and on to the SQL page. The dashboard signs in with the env token, as `keyrack
dashboard` does; and a shared link opened in a fresh session, through the sign-in form and through the env token,
showing the shared view (page, controls and chart), not Monitor."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy_service.startup import streamlit_argv
from tests.dashboard.conftest import ADMIN_TOKEN, APP, Stack
from tests.dashboard.test_browser import (  # noqa: F401  (fixtures: browser, dashboard_url)
    CHROMIUM,
    CHROMIUM_ARGS,
    _free_port,
    _idle,
    _shot,
    browser,
    dashboard_url,
    tab,
)


@pytest.fixture(scope="module")
def signed_in_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "KEYRACK_ADMIN_URL": stack.url, "KEYRACK_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONUNBUFFERED": "1"}
    log = tmp_path_factory.mktemp("streamlit-explore") / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*streamlit_argv(APP, "127.0.0.1", port), "--server.fileWatcherType", "none"],
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


def test_explore_drill_down_and_shared_url_in_a_real_browser(signed_in_url: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or `apt-get install chromium`)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=30_000)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 1400},
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            page.goto(signed_in_url)  # signs in with the env token, lands on Monitor
            expect(page.get_by_role("heading", name="Monitor")).to_be_visible()
            _idle(page, 30_000)
            page.get_by_role("link", name="Explore").click()
            expect(page.get_by_role("heading", name="Explore")).to_be_visible()
            _idle(page, 30_000)
            assert "m=calls" in page.url and "r=model" in page.url  # the default view, written to the URL

            # Controls write the URL: columns = outcome, then the heatmap view.
            page.get_by_role("combobox", name="Columns").click()
            page.get_by_role("option", name="Outcome", exact=True).click()
            _idle(page, 30_000)
            assert "c=outcome" in page.url

            # A control writes the URL.
            page.locator('[data-testid="stButtonGroup"]').get_by_text("Heatmap", exact=True).click()
            _idle(page, 30_000)
            expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)
            assert "v=heatmap" in page.url

            # Drill down: click a cell of the pivot's first row (a model × an outcome).
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            box = grid.bounding_box()
            assert box is not None
            heading = page.get_by_role("heading", name="Calls: Model =")
            for x in (230, 330, 430):
                page.mouse.click(box["x"] + x, box["y"] + 35 + 17)
                _idle(page, 30_000)
                if heading.count():
                    break
            expect(heading).to_be_visible()
            _shot(page, "explore")
            expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(2)  # the pivot and the calls
            page.get_by_role("button", name="Open in SQL").click()
            expect(page.get_by_role("heading", name="SQL", exact=True)).to_be_visible()
            expect(page.get_by_role("textbox", name="SQL")).to_have_value(re.compile("FROM requests"))
            page.get_by_role("button", name="Run").click()
            expect(page.get_by_text(" rows · ")).to_be_visible()

        finally:
            ctx.close()


SHARED = "explore?m=calls&r=model&c=outcome&v=heatmap&top=10"


def _shows_the_shared_view(page: Any, base: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name="Explore")).to_be_visible()
    _idle(page, 60_000)
    assert page.url.startswith(f"{base}/explore?")
    for part in ("r=model", "c=outcome", "v=heatmap"):
        assert part in page.url, page.url
    expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)  # the heatmap, not the default pivot


def test_a_shared_link_opened_in_a_fresh_session_shows_the_shared_view_after_sign_in(
    browser: Any,  # noqa: F811  (the fixture imported above)
    dashboard_url: str,  # noqa: F811
    signed_in_url: str,
) -> None:
    # Signing in with the form (no env token)...
    with tab(browser, dashboard_url) as t:
        t.goto(SHARED)
        t.sign_in()
        _shows_the_shared_view(t.page, dashboard_url)
    # ... and with the env token, which signs the session in on its first run.
    with tab(browser, signed_in_url) as t:
        t.goto(SHARED)
        _shows_the_shared_view(t.page, signed_in_url)
