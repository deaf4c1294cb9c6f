"""AppTest: the Alerts page against the real proxy — a firing rule, the backtest chart, channels, language."""

from __future__ import annotations

import asyncio

from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import Stack, open_app
from tests.dashboard.test_pages import ok, texts


def evaluate(stack: Stack) -> None:
    """One evaluation now, on the proxy's own loop (the page test does not wait for the 15 s interval)."""
    gw = stack.gateway
    assert gw.loop is not None
    asyncio.run_coroutine_threadsafe(gw.alerts.evaluate(), gw.loop).result(30)


def open_alerts(badge: str | None = None) -> AppTest:
    at = open_app()
    if badge is not None:  # (AppTest keeps the entry script's sidebar for the first run only)
        assert any(badge in m for m in texts(at.sidebar.markdown)), texts(at.sidebar.markdown)
    at.switch_page("screens/alerts.py")
    return ok(at.run())


def test_alerts_page_shows_firing_rules_backtest_channels_and_speaks_chinese(dash_env: Stack) -> None:
    rule = dash_env.admin(
        "POST",
        "/alerts/rules",
        json={
            "name": "Page test: keys present",
            "metric": "active_keys",
            "op": ">",
            "threshold": 0,
            "window_s": 60,
            "severity": "critical",
        },
    )
    slow = dash_env.admin(
        "POST",
        "/alerts/rules",
        json={
            "name": "Page test: success",
            "metric": "success_rate",
            "op": "<",
            "threshold": 0.95,
            "window_s": 900,
            "for_s": 0,
            "enabled": False,
        },
    )
    try:
        evaluate(dash_env)
        at = open_alerts(badge="1 firing")
        assert "Alerts" in texts(at.title)
        assert "Firing now (1)" in texts(at.subheader)
        firing = at.dataframe[0].value
        assert list(firing["rule"]) == ["Page test: keys present"] and "critical" in firing["severity"].iloc[0]

        # the editor: pick the success-rate rule and backtest it over the seeded 3 days
        at.selectbox(key="rule_choice.en").select(slow["id"])
        ok(at.run())
        at.button(key="FormSubmitter:rule_form_" + slow["id"] + "-Backtest 7 days").click()
        ok(at.run())
        assert at.get("plotly_chart"), "no backtest chart"
        assert any("Would have fired" in c for c in texts(at.caption)), texts(at.caption)

        # channels: add one; the list shows it masked
        at.text_input(key="channel_name").input("ops hook")
        at.text_input(key="channel_url").input("json://user:hunter2pass@127.0.0.1:9/hook")
        at.button(key="FormSubmitter:channel_form-Add channel").click()
        ok(at.run())
        assert "Channel added." in texts(at.success)
        channels = dash_env.admin("GET", "/alerts/channels")["items"]
        assert any(c["name"] == "ops hook" for c in channels)
        frames = [d.value for d in at.dataframe]
        assert any("ops hook" in set(f.get("name", [])) for f in frames)
        assert all("hunter2pass" not in f.to_string() for f in frames)

        at.session_state["lang"] = "zh"
        ok(at.run())
        assert "告警" in texts(at.title) and "正在告警（1）" in texts(at.subheader)
    finally:
        dash_env.admin("DELETE", f"/alerts/rules/{rule['id']}")
        dash_env.admin("DELETE", f"/alerts/rules/{slow['id']}")
        for c in dash_env.admin("GET", "/alerts/channels")["items"]:
            dash_env.admin("DELETE", f"/alerts/channels/{c['id']}")
        evaluate(dash_env)
