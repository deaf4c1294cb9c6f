"""AppTest: the Explore page against the real proxy of tests/dashboard/conftest.py (400 seeded calls)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.logic import explore_view as ev
from tests.dashboard.conftest import Stack, open_app


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.message for e in at.exception]
    return at


def start(params: dict[str, str] | None = None) -> AppTest:
    at = open_app(timeout=60)
    at.switch_page("screens/explore.py")
    for k, v in (params or {}).items():
        at.query_params[k] = v
    return ok(at.run())


def _one(v: object) -> object:
    return v[0] if isinstance(v, list) else v


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def test_default_pivot_counts_every_call_and_writes_the_view_to_the_url(dash_env: Stack) -> None:
    at = start()
    assert "Explore" in texts(at.title)
    pivot = at.dataframe[0].value
    assert list(pivot.columns) == ["Calls"]  # the measure by its name, not its id
    assert pivot.loc["Σ", "Calls"] >= 400  # the seeded calls, all within the last 3 days
    assert set(pivot.index) - {"Σ"} <= {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"}
    api = dash_env.admin(
        "POST", "/explore", json={"measures": ["calls"], "dimensions": ["model"], "from": "2020-01-01"}
    )
    assert {r[0]: r[1] for r in api["rows"]} == {m: pivot.loc[m, "Calls"] for m in pivot.index if m != "Σ"}
    assert at.query_params["m"] in ("calls", ["calls"]) and at.query_params["r"] in ("model", ["model"])


def test_a_shared_url_reproduces_the_view(dash_env: Stack) -> None:
    params = {
        "m": "p95_latency_ms",
        "r": "hour_of_day",
        "c": "day_of_week",
        "v": "heatmap",
        "top": "5",
        "cmp": "1",
        "f.outcome": "success",
    }
    at = start(params)
    assert at.selectbox(key="ex_m.en").value == "p95_latency_ms"
    assert at.selectbox(key="ex_r.en").value == "hour_of_day" and at.selectbox(key="ex_c.en").value == "day_of_week"
    assert at.toggle(key="ex_cmp.en").value is True and at.number_input(key="ex_top.en").value == 5
    assert any("Outcome = success" in c for c in texts(at.caption))
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["data"][0]["type"] == "heatmap" and spec["layout"]["title"]["text"] == "p95 latency (ms)"
    assert {k: _one(at.query_params[k]) for k in params} == params  # the URL still says the same
    assert len(at.dataframe) == 2  # the pivot and, with compare on, the change table


def test_drill_down_from_a_cell_lists_the_calls_and_opens_them_in_sql(dash_env: Stack) -> None:
    at = start({"m": "calls", "r": "model", "c": "outcome"})
    pivot = at.dataframe[0].value
    model = next(m for m in pivot.index if m != "Σ")
    # outcomes by their names ("upstream error"), clicked as shown: the drill-down asks for the id behind the name
    column = "upstream error" if "upstream error" in pivot.columns else next(c for c in pivot.columns if c != "Σ")
    row = list(pivot.index).index(model)
    at.session_state["ex_pivot"] = {"selection": {"rows": [], "columns": [], "cells": [(row, column)]}}
    ok(at.run())
    assert f"Calls: Model = {model} · Outcome = {column}" in texts(at.subheader)
    calls = at.dataframe[-1].value
    assert len(calls) == min(200, int(pivot.loc[model, column]))
    assert set(calls["model"]) == {model} and set(calls["outcome"]) == {column}
    assert any(f"'{model}'" in c for c in texts(at.code))  # the same selection as SQL
    if column != "success":  # failures carry their error-log entry
        at.session_state["ex_calls"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
        ok(at.run())
        assert any(e.label.startswith("Error log entry") for e in at.expander)
    ok(at.button(key="ex_open_sql").click().run())
    assert f"'{model}'" in at.text_area(key="sql_text").value  # the SQL page, pre-filled
    at.switch_page("screens/sql.py")  # AppTest stays on its own page across runs: follow the switch
    ok(at.button(key="sql_run").click().run())
    result = at.dataframe[0].value
    assert set(result["model"]) == {model} and len(result) == min(1000, int(pivot.loc[model, column]))


@pytest.mark.parametrize("view", ["multiples", "share"])
def test_time_and_share_views_draw(dash_env: Stack, view: str) -> None:
    at = start({"m": "total_tokens", "r": "day", "c": "model", "v": view})
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert spec["layout"]["title"]["text"] == "Total tokens"
    assert len(at.get("download_button")) == 2


def test_explore_renders_in_chinese(dash_env: Stack) -> None:
    dash_env.admin("PATCH", "/config", json={"language": "zh"})
    try:
        at = start()
        assert "多维分析" in texts(at.title) and not at.error
    finally:
        dash_env.admin("PATCH", "/config", json={"language": "en"})


def test_view_url_round_trip_and_malformed_params_fall_back() -> None:
    v = ev.View(
        "p99_latency_ms",
        "client",
        "hour",
        "multiples",
        compare=True,
        top_n=7,
        filters={"model": ["a", "b"], "stream": ["true"]},
    )
    assert ev.from_params(ev.to_params(v)) == v
    bad = ev.from_params({"m": "DROP", "r": "nope", "from": "yesterday", "top": "1e30", "f.colour": "red"})
    assert bad == ev.View()
    body = ev.request(v, pd.Timestamp("2026-01-01"), pd.Timestamp("2026-01-08"))
    assert body["filters"] == {"model": ["a", "b"], "stream": [True]} and body["compare"] == "previous_period"


def test_pivot_totals_only_where_the_measure_adds_up() -> None:
    df = pd.DataFrame(
        {
            "model": ["a", "a", "b"],
            "outcome": ["ok", "err", "ok"],
            "calls": [3, 1, 2],
            "p95_latency_ms": [10.0, 20.0, 30.0],
        }
    )
    table = ev.pivot(df, ev.View("calls", "model", "outcome"))
    assert table.loc["Σ", "Σ"] == 6 and table.loc["a", "Σ"] == 4
    assert "Σ" not in ev.pivot(df, ev.View("p95_latency_ms", "model", "outcome")).index


def test_trends_breaks_down_by_client_with_labels(dash_env: Stack) -> None:
    import uuid
    from datetime import UTC, datetime

    from proxy_service.events import RequestEvent

    cid = "t_0123456789"
    for i in range(3):
        dash_env.gateway.writer.record(
            RequestEvent(
                ts=datetime.now(UTC).replace(tzinfo=None),
                request_id=uuid.uuid4().hex,
                client_id=cid,
                surface="openai",
                operation="chat",
                model="gemini-2.5-pro",
                stream=False,
                status=200,
                latency_ms=100.0 + i,
                total_tokens=10,
            )
        )
    dash_env.flush()
    dash_env.admin("PATCH", "/config", json={"client_labels": {cid: "billing-service"}})
    try:
        at = open_app("trends", timeout=60)
        at.selectbox(key="breakdown.en").set_value("client")
        ok(at.run())
        names = {trace["name"] for c in at.get("plotly_chart") for trace in json.loads(c.proto.spec)["data"]}
        assert {"billing-service", "test"} <= names
    finally:
        dash_env.admin("PATCH", "/config", json={"client_labels": {}})
