"""The quota-first views end to end: the admin API's pool headroom, the 429 story and the error-log facets against
the real proxy, and the dashboard drawing them (AppTest). Error reasons are machine-readable and translated."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from proxy_service.keys import key_id
from proxy_service.pool import Cooldown
from tests.conftest import fake_key
from tests.dashboard.conftest import ADMIN_TOKEN, Stack, open_app

MODEL = "gemini-2.5-pro"


@contextlib.contextmanager
def cooling(stack: Stack, scope: str = "alpha", model: str = MODEL, seconds: float = 300) -> Iterator[float]:
    """(scope, model) cools for `seconds`, as after a per-minute 429; the cooldown is removed afterwards."""
    until = time.time() + seconds
    stack.gateway.pool.cooldowns[(scope, model)] = Cooldown(until=until, reason="minute", quota_id="RPM")
    try:
        yield until
    finally:
        stack.gateway.pool.cooldowns.pop((scope, model), None)


def test_pool_headroom_puts_the_cooling_pair_on_top(stack: Stack) -> None:
    with cooling(stack) as until:
        data = stack.admin("GET", "/pool/headroom")
    top = data["scopes"][0]
    assert (top["scope"], top["project"], top["model"]) == ("alpha", "alpha", MODEL)
    assert top["headroom"] == 0.0 and top["cooling_reason"] == "minute"
    assert top["cooling_until"] == top["frees_at"] and abs(_epoch(top["frees_at"]) - until) < 1
    assert top["keys"] == 2 and top["rpm_used"] >= 0 and "rpd_limit" in top
    pairs = {(r["scope"], r["model"]) for r in data["scopes"]}
    assert {("beta", m) for m in ("gemini-2.5-flash", "gemini-2.5-pro")} <= pairs  # used in the last 24 h
    headrooms = [r["headroom"] for r in data["scopes"]]
    assert headrooms == sorted(headrooms)  # tightest first
    pro = next(m for m in data["models"] if m["model"] == MODEL)
    assert pro["cooling_scopes"] == 1 and pro["scopes"] >= 2 and pro["open_scopes"] == pro["scopes"] - 1
    with pytest.raises(httpx.HTTPStatusError):
        stack.admin("GET", "/pool/headroom", params={"hours": "0"})


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_outcomes_tell_the_429_story(stack: Stack) -> None:
    from dashboard.logic.client import AdminClient

    client = AdminClient(stack.url, ADMIN_TOKEN)
    df = client.outcomes("day")
    totals = df.groupby("group")["n"].sum()
    calls = stack.admin("POST", "/query", json={"sql": "SELECT count(*) AS n FROM requests", "format": "json"})
    n_requests = calls["rows"][0][0]
    assert totals.filter(like="outcome:").sum() == totals.filter(like="status:").sum() == n_requests
    sql = "SELECT count(*) FILTER (WHERE upstream_status = 429), count(*) FROM attempts"
    up_429, attempts = stack.admin("POST", "/query", json={"sql": sql, "format": "json"})["rows"][0]
    assert totals["upstream_429"] == up_429 > 0 and totals["attempts"] == attempts
    assert totals["outcome:exhausted"] > 0 and str(df["bucket"].dt.tz) == "UTC"


def test_error_facets_are_the_values_that_exist(stack: Stack) -> None:
    facets = stack.admin("GET", "/errors/facets")["facets"]
    assert {v["value"] for v in facets["status"]} >= {429, 503}
    assert {v["value"] for v in facets["key_id"]} >= {key_id(fake_key("key-beta-1"))}
    counts = [v["count"] for v in facets["model"]]
    assert counts == sorted(counts, reverse=True)
    empty = stack.admin("GET", "/errors/facets", params={"from": "2001-01-01", "to": "2001-01-02"})["facets"]
    assert all(values == [] for values in empty.values())


def test_admin_errors_carry_a_reason_the_dashboard_translates(dash_env: Stack) -> None:
    resp = dash_env.http.post(f"{dash_env.url}/admin/api/query", json={"sql": "SELECT nope FROM requests"})
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["reason"] == "query_failed" and "nope" in err["detail"]
    resp = dash_env.http.get(f"{dash_env.url}/admin/api/stats/series", params={"granularity": "year"})
    assert resp.json()["error"]["reason"] == "invalid_value" and resp.json()["error"]["field"] == "granularity"

    dash_env.admin("PATCH", "/config", json={"language": "zh"})
    try:
        at = open_app("sql")
        at.text_area(key="sql_text").input("SELECT nope FROM requests")
        at.button(key="sql_run").click().run()
        errors = [e.value for e in at.error]
        assert any(e.startswith("查询失败：") and "nope" in e for e in errors), errors
    finally:
        dash_env.admin("PATCH", "/config", json={"language": "en"})


def test_monitor_headroom_panel_and_trends_story(dash_env: Stack) -> None:
    with cooling(dash_env):
        at = open_app()
        assert "Pool headroom" in [s.value for s in at.subheader]
        models, scopes = at.dataframe[0].value, at.dataframe[1].value
        assert MODEL in set(models["model"])
        first = scopes.iloc[0]
        assert (first["model"], first["project"], first["headroom"]) == (MODEL, "alpha", 0.0)
        assert "per-minute limit" in first["cooling"] and first["frees_at"]
        assert all("None" not in str(v) for v in scopes.to_numpy().ravel())

    at.switch_page("screens/trends.py").run()
    assert not at.exception
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert {"Rate limits: Google's 429s vs Keyrack's refusals", "Calls by outcome", "Calls by HTTP status"} <= set(
        titles
    )
