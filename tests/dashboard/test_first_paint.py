"""Real browser: a cold dashboard (a fresh server process, its first visitor) paints Keyrack's own navigation from
the first frame that has any navigation — never Streamlit's page list of file names — signed in by a one-time link
(the top bar) and signed out (no navigation at all, only the sign-in form)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dashboard.logic.i18n import EN
from tests.dashboard.conftest import Stack, running_dashboard
from tests.dashboard.test_browser import (  # noqa: F401  (fixture: browser)
    IDLE,
    browser,
)

pytestmark = pytest.mark.timeout(600)
TITLES = {EN[k] for k in EN if k.startswith("nav.")}
FILE_NAMES = {p.stem for p in (Path(__file__).resolve().parents[2] / "dashboard" / "screens").glob("*.py")} | {"app"}
# Every change to the DOM is looked at: each distinct set of navigation texts is kept, in order, with the time.
WATCH = """
window.__navs = [];
new MutationObserver(() => {
  const links = Array.from(document.querySelectorAll(
    '[data-testid="stSidebarNav"] a, [data-testid="stSidebarNavLink"], [data-testid="stTopNavLink"], [data-testid="stTopNav"] a'
  )).map(a => {  // the label without its icon's ligature name
    const c = a.cloneNode(true);
    c.querySelectorAll('[data-testid="stIconMaterial"]').forEach(i => i.remove());
    return c.textContent.trim();
  }).filter(s => s);
  const key = links.join('|');
  const last = window.__navs.length ? window.__navs[window.__navs.length - 1].key : '';
  if (key !== last) window.__navs.push({key, links, t: performance.now()});
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def _navs(chromium: Any, url: str, done: str) -> list[dict[str, Any]]:
    """Every navigation a fresh tab on `url` showed until `done` (a selector) is drawn and the script is idle."""
    ctx = chromium.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = ctx.new_page()
        page.add_init_script(WATCH)
        page.goto(url)
        page.locator(done).first.wait_for(timeout=120_000)
        page.locator(IDLE).wait_for(timeout=120_000)
        return list(page.evaluate("window.__navs"))
    finally:
        ctx.close()


def test_a_cold_dashboard_paints_keyrack_navigation_first(
    browser: Any,  # noqa: F811
    stack: Stack,
    tmp_path: Path,
) -> None:
    with running_dashboard(stack.url, tmp_path) as dashboard:
        signed_in = _navs(browser, dashboard.link(), '[data-testid="stTopNavLink"]')  # the server's first run
        signed_out = _navs(browser, f"{dashboard.url}/trends", '[data-testid="stForm"]')  # the sign-in form
    shown = [s for s in signed_in if s["links"]]
    assert shown, f"no navigation was drawn at all: {signed_in}"
    for s in shown:
        assert set(s["links"]) <= TITLES, f"a frame showed {s['links']} (file names: {FILE_NAMES})"
    assert set(shown[-1]["links"]) == {
        EN[f"nav.{p}"]
        for p in ("monitor", "trends", "forecast", "explore", "errors", "alerts", "clients", "config", "sql")
    }
    assert not [s for s in signed_out if s["links"]], f"signed out, a navigation was drawn: {signed_out}"
