"""Retake docs/screenshots/forecast.png (`make screenshot-forecast`): the demo's history backfilled into a fresh data
directory, the demo pool behind a real proxy with a busy quota day, the dashboard under `streamlit run`, Debian's
Chromium via Playwright (the setup of tests/dashboard/test_browser.py). Not a test: it only takes the picture."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from proxy_service.admin import forecast as admin_forecast
from proxy_service.app import create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.demo.history import backfill, demo_rates
from proxy_service.demo.scenario import DEMO_PROJECTS, demo_pool
from proxy_service.demo.traffic import MODELS
from proxy_service.settings import Settings
from tests.dashboard.test_browser import APP, CHROMIUM, CHROMIUM_ARGS, SHOTS, _free_port, _idle
from tests.servers import serve

TOKEN = "screenshot-admin-token-1"
BUSY = {"gemini-2.5-pro": 0.75, "gemini-2.5-flash": 0.45}  # share of the day's limit used by now, per model


async def busy_day(gw: object) -> None:
    """Calls on the pool as the relay makes them, and a rate history for the meter (ten minutes at a steady pace)."""
    pool, meter = gw.pool, admin_forecast.engine(gw).meter  # type: ignore[attr-defined]
    now = time.time()
    for model, share in BUSY.items():
        for scope in DEMO_PROJECTS:
            limit = pool.tracker.limits(scope, model).rpd or 100
            used = int(limit * share)
            key = next(k for k in pool.keys.values() if k.scope == scope)
            for _ in range(used):
                pool.tracker.record(scope, model, now)
            key.requests += used
            per_min = used / (14 * 60)  # as if the day had run at this pace for 14 hours
            for i in range(10, -1, -1):
                meter.observe(scope, model, max(0, used - round(per_min * i)), now - 60 * i)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="keyrack-shot-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        backfill(data / "keyrack.duckdb", demo_rates(2.0, MODELS), projects=DEMO_PROJECTS)
        api_keys, scenario = demo_pool()
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
                eng = admin_forecast.engine(gw)
                asyncio.run_coroutine_threadsafe(eng.refresh(admin_forecast._reader(gw)), gw.loop).result(300)
                return shoot(url)


def shoot(proxy_url: str) -> int:
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    env = {**os.environ, "KEYRACK_ADMIN_URL": proxy_url, "KEYRACK_ADMIN_TOKEN": TOKEN}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start")
            time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1200})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/forecast")
            expect(page.get_by_role("heading", name="Forecast", exact=True)).to_be_visible(timeout=60_000)
            expect(page.locator('[data-testid="stPlotlyChart"]')).to_have_count(2, timeout=60_000)
            page.get_by_role("button", name="Plan").click()
            expect(page.get_by_text("Projects needed")).to_be_visible()
            _idle(page, 60_000)
            page.wait_for_timeout(1500)  # charts finish drawing
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "forecast.png"), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"written {SHOTS / 'forecast.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
