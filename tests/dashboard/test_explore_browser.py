"""Real browser (Debian's Chromium via Playwright) on Explore: controls writing the view to the URL, a drill-down
from a pivot cell to its calls and on to the SQL page. A one-time sign-in link signs the browser in, as
`keyrack run` prints it; and a shared link opened in a fresh session, through the sign-in form and through the link's
cookie, showing the shared view (page, controls and chart), not Monitor."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.conftest import Dashboard
from tests.dashboard.test_browser import (  # noqa: F401  (fixture: browser)
    CHROMIUM,
    CHROMIUM_ARGS,
    _idle,
    _shot,
    browser,
    tab,
)


def test_explore_drill_down_and_shared_url_in_a_real_browser(dashboard: Dashboard, tmp_path: Path) -> None:
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
            page.goto(dashboard.link())  # a one-time sign-in link: the cookie, then Monitor
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
    dashboard: Dashboard,
) -> None:
    # Signing in with the form...
    with tab(browser, dashboard.url) as t:
        t.goto(SHARED)
        t.sign_in()
        _shows_the_shared_view(t.page, dashboard.url)
    # ... and in a browser signed in by a one-time link earlier: its cookie signs the new session in on its first run.
    with tab(browser, dashboard.url) as t:
        t.open_link(dashboard.link())
        t.goto(SHARED)
        _shows_the_shared_view(t.page, dashboard.url)


CLIPPED = """() => Array.from(document.querySelectorAll('[data-testid="stMain"] *')).filter(e =>
    e.clientWidth > 1 && e.scrollWidth > e.clientWidth + 2 && getComputedStyle(e).overflowX !== 'visible'
    && !e.closest('[data-testid="stDataFrame"], [data-testid="stPlotlyChart"], [data-testid="stCode"]'))
    .map(e => `${e.dataset.testid || e.tagName}: ${e.innerText.slice(0, 40)}`)"""


def test_explore_controls_fit_a_laptop_screen(browser: Any, dashboard: Dashboard) -> None:  # noqa: F811
    """At 1400 px with the sidebar open, no control of Explore is cut (a view button, a label, a download)."""
    from playwright.sync_api import expect

    with tab(browser, dashboard.url) as t:
        t.page.set_viewport_size({"width": 1400, "height": 1000})
        t.goto("explore")
        t.sign_in()
        expect(t.page.get_by_role("heading", name="Explore")).to_be_visible()
        expect(t.page.get_by_role("button", name="Download Parquet")).to_be_visible()
        t.idle()
        assert not t.page.evaluate(CLIPPED)
