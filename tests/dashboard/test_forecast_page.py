"""AppTest: the Forecast page and the Monitor card against the real proxy, with live pool counters and recorded
history."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

from proxy_service.admin import forecast as admin_forecast
from proxy_service.app import Gateway
from proxy_service.events import RequestEvent
from tests.dashboard.conftest import Stack
from tests.dashboard.test_pages import ok, start, texts

OTHER = "gemini-2.0-flash"  # one of the shared stack's models: other pages' tests check the set of models
FLASH = "gemini-2.5-flash"


async def _calls(gw: Gateway, model: str, n: int) -> None:
    for _ in range(n):  # the pool's own accounting, as the relay does it
        key = gw.pool.choose(model)
        gw.pool.started(key, model)
        gw.pool.finished(key)
        gw.pool.succeeded(key, model)


def prepare(stack: Stack) -> None:
    gw = stack.gateway
    assert gw.loop is not None
    for model, n in ((FLASH, 12), (OTHER, 5)):
        asyncio.run_coroutine_threadsafe(_calls(gw, model, n), gw.loop).result(10)
    eng = gw.forecast
    gw.loop.call_soon_threadsafe(eng.meter.sample, gw.pool, datetime.now(UTC).timestamp())
    end = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    for h in range(5 * 24):  # five days of history, busier in the daytime
        ts = end - timedelta(hours=5 * 24 - h)
        for i in range(1 + 4 * (9 <= ts.hour < 18)):
            gw.writer.record(
                RequestEvent(
                    ts=ts + timedelta(seconds=i),
                    request_id=uuid.uuid4().hex,
                    client_id="forecast-test",
                    surface="gemini",
                    operation="generateContent",
                    model=OTHER,
                    stream=False,
                    status=200,
                    outcome="success",
                    project="alpha",
                    latency_ms=90.0,
                )
            )
    gw.writer.flush()
    asyncio.run_coroutine_threadsafe(eng.refresh(admin_forecast._reader(gw)), gw.loop).result(120)


def test_forecast_page_timeline_demand_planner_and_monitor_card(dash_env: Stack) -> None:
    prepare(dash_env)
    at = start("forecast")
    assert "Forecast" in texts(at.title)
    timeline = json.loads(at.get("plotly_chart")[0].proto.spec)
    labels = {trace["y"][0] for trace in timeline["data"]}
    assert {f"{FLASH} · alpha", f"{FLASH} · beta", f"{OTHER} · alpha", f"{OTHER} · beta"} <= labels
    assert any(s.get("type") == "line" for s in timeline["layout"]["shapes"])  # the reset line

    at.selectbox(key="fc_model.en").set_value(OTHER)
    ok(at.run())
    demand = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert [len(trace["x"]) for trace in demand["data"]] == [5 * 24, 48, 24]  # history, band, forecast
    assert any("Backtest on the last" in c and "MAPE" in c for c in texts(at.caption))

    at.selectbox(key="fc_plan_model").set_value(OTHER)
    at.number_input(key="fc_rpd").set_value(5000.0)
    plan = next(b for b in at.button if b.key.startswith("FormSubmitter:fc_plan_form"))  # the sidebar has buttons too
    ok(plan.click().run())
    metrics = {m.label: m.value for m in at.metric}
    # two active projects (alpha, beta) at the built-in 1,500 calls/day: 4 needed, 2 more
    assert metrics["Projects needed"] == "4" and metrics["Projects to add"] == "2"
    assert any("alpha" in c and "add no capacity" in c for c in texts(at.caption))

    at.number_input(key="fc_rpd").set_value(-1.0)  # the widget refuses it: min_value 0
    ok(at.run())

    monitor = start("monitor")
    assert "Soonest quota exhaustion" in [m.label for m in monitor.metric]


def test_forecast_page_in_chinese(dash_env: Stack) -> None:
    dash_env.admin("PATCH", "/config", json={"language": "zh"})
    try:
        at = start("forecast")
        assert "预测" in texts(at.title)
        assert "今日配额：各模型何时耗尽？" in texts(at.subheader) and "容量规划" in texts(at.subheader)
        assert not at.error
    finally:
        dash_env.admin("PATCH", "/config", json={"language": "en"})
