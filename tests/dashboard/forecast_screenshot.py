"""Retake docs/screenshots/forecast.png (`make screenshot-forecast`): the demo's history backfilled into a fresh data
directory, the demo pool behind a real proxy with a busy quota day, the dashboard served as `keyrack run` serves it, Debian's
Chromium via Playwright (the setup of tests/dashboard/test_browser.py). Not a test: it only takes the picture."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from proxy_service.admin import forecast as admin_forecast
from proxy_service.app import create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.demo.history import backfill, pool_of
from proxy_service.demo.rhythm import DEFAULT_RATE
from proxy_service.demo.scenario import DEMO_PROJECTS, demo_pool
from proxy_service.demo.traffic import HABITS
from proxy_service.quota import next_pacific_midnight
from proxy_service.settings import Settings
from tests.dashboard.conftest import running_dashboard
from tests.dashboard.test_browser import CHROMIUM, CHROMIUM_ARGS, SHOTS, _idle
from tests.servers import serve

TOKEN = "screenshot-admin-token-1"
BUSY = {"gemini-2.5-pro": 0.93, "gemini-2.5-flash": 0.55}  # share of the day's limit used by now, per model
SPREAD = (1.0, 0.97, 0.9, 0.8, 0.6)  # projects are not equally busy


async def busy_day(gw: object) -> None:
    """Calls on the pool as the relay makes them, at a steady pace since the Pacific midnight, and the rate meter's
    readings of the last ten minutes of it."""
    pool, meter = gw.pool, gw.forecast.meter  # type: ignore[attr-defined]
    now = time.time()
    elapsed_min = max(60.0, (now - (next_pacific_midnight(now) - 86400)) / 60)
    for model, share in BUSY.items():
        for scope, factor in zip(DEMO_PROJECTS, SPREAD, strict=True):
            limit = pool.tracker.limits(scope, model).rpd or 100
            used = int(limit * min(0.98, share * factor))
            key = next(k for k in pool.keys.values() if k.scope == scope)
            for _ in range(used):
                pool.tracker.record(scope, model, now)
            key.requests += used
            per_min = used / elapsed_min
            for i in range(10, -1, -1):
                meter.observe(scope, model, max(0, used - round(per_min * i)), now - 60 * i)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyrack-shot-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        api_keys, scenario = demo_pool()
        clients = {h.name: f"t_demo{i:06d}" for i, h in enumerate(HABITS)}
        backfill(data / "keyrack.duckdb", DEFAULT_RATE, pool_of(api_keys, scenario["invalid_keys"], clients))
        with serve(create_fake(scenario)) as upstream:
            settings = Settings(  # type: ignore[call-arg]
                _env_file=None,
                data_dir=data,
                upstream_url=upstream,
                admin_token=TOKEN,
                api_keys=api_keys,
                recheck_interval_s=3600,
                snapshot_interval_s=0,
            )
            app = create_app(settings)
            with serve(app, lifespan="on") as url:
                gw = app.state.gateway
                asyncio.run_coroutine_threadsafe(busy_day(gw), gw.loop).result(30)
                eng = gw.forecast
                asyncio.run_coroutine_threadsafe(eng.refresh(admin_forecast._reader(gw)), gw.loop).result(300)
                return shoot(url)


def shoot(proxy_url: str) -> int:
    from playwright.sync_api import expect, sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="keyrack-shot-dash-") as logs,
        running_dashboard(proxy_url, Path(logs), admin_token=TOKEN) as dashboard,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 2500})
        page.set_default_timeout(60_000)
        page.goto(dashboard.link())  # a one-time sign-in link, as `keyrack run` prints it: Monitor, signed in
        expect(page.get_by_role("heading", name="Monitor")).to_be_visible(timeout=60_000)
        page.get_by_role("link", name="Forecast").click()
        expect(page.get_by_role("heading", name="Forecast", exact=True)).to_be_visible(timeout=60_000)
        expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(2, timeout=60_000)
        page.get_by_role("button", name="Plan").click()
        expect(page.get_by_text("Projects needed")).to_be_visible()
        _idle(page, 60_000)
        page.mouse.wheel(0, -10_000)  # back to the top: Streamlit scrolls its main block, not the page
        page.wait_for_timeout(1500)  # charts finish drawing
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "forecast.png"), full_page=True)
        browser.close()
    print(f"written {SHOTS / 'forecast.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
