"""Real browser (Debian's Chromium via Playwright) on the Alerts page: a firing rule is listed, the sidebar badge
counts it, the backtest chart draws, the history timeline shows. Saves docs/screenshots/alerts.png like the other
page shots."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard.conftest import ADMIN_TOKEN, Stack
from tests.dashboard.test_alerts_page import evaluate
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, _idle, _shot


def test_alerts_page_in_a_real_browser(dashboard_url: str, stack: Stack, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium` or `apt-get install chromium`)")
    from playwright.sync_api import expect, sync_playwright

    rule = stack.admin(
        "POST",
        "/alerts/rules",
        json={
            "name": "No spare keys",
            "metric": "active_keys",
            "op": ">",
            "threshold": 0,
            "window_s": 60,
            "severity": "warning",
        },
    )
    evaluate(stack)
    expect.set_options(timeout=20_000)
    try:
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
                page.goto(f"{dashboard_url}/alerts")
                page.get_by_label("Admin token").fill(ADMIN_TOKEN)
                page.get_by_role("button", name="Sign in").click()
                page.get_by_role("link", name="Alerts").click()
                expect(page.get_by_role("heading", name="Alerts")).to_be_visible()
                expect(page.get_by_text("Firing now (1)")).to_be_visible()
                expect(page.get_by_text("1 firing")).to_be_visible()  # the sidebar badge
                expect(page.locator("td", has_text="No spare keys").first).to_be_attached()  # the canvas grid's cells
                page.get_by_role("tab", name="History").click()
                _idle(page)
                expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(1)
                page.get_by_role("tab", name="Rules").click()
                _shot(page, "alerts")

                # Adding a channel reruns the page: it stays on the Channels tab (it used to jump back to Rules).
                page.get_by_role("tab", name="Channels").click()
                _idle(page)
                page.get_by_label("Name").last.fill("browser hook")
                page.get_by_label("Apprise URL (secret)").fill("json://127.0.0.1:9/")
                page.get_by_role("button", name="Add channel").click()
                _idle(page)
                expect(page.get_by_text("Channel added.")).to_be_visible()
                expect(page.get_by_role("tab", name="Channels")).to_have_attribute("aria-selected", "true")
            finally:
                ctx.close()
    finally:
        stack.admin("DELETE", f"/alerts/rules/{rule['id']}")
        for channel in stack.admin("GET", "/alerts/channels")["items"]:
            if channel["name"] == "browser hook":
                stack.admin("DELETE", f"/alerts/channels/{channel['id']}")
        evaluate(stack)
