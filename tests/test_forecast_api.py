"""The forecast admin API through a real proxy (fake Gemini upstream behind it) on a real DuckDB file."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from proxy_service.admin import forecast as admin_forecast
from proxy_service.app import Gateway, create_app
from proxy_service.demo.fake_upstream import create_app as create_fake
from proxy_service.events import RequestEvent
from proxy_service.settings import Settings
from tests.conftest import ADMIN_TOKEN, CLIENT_TOKEN, POOL_KEYS, SCENARIO
from tests.servers import serve

MODEL = "gemini-2.5-flash"


@dataclass
class Env:
    url: str
    gw: Gateway
    http: httpx.Client

    def refresh(self) -> None:
        eng = self.gw.forecast
        assert self.gw.loop is not None
        asyncio.run_coroutine_threadsafe(eng.refresh(admin_forecast._reader(self.gw)), self.gw.loop).result(120)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    data_dir = tmp_path_factory.mktemp("forecast")
    with serve(create_fake(SCENARIO)) as upstream:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=data_dir,
            upstream_url=upstream,
            admin_token=ADMIN_TOKEN,
            access_tokens=[CLIENT_TOKEN],
            api_keys=POOL_KEYS,
            recheck_interval_s=3600,
            snapshot_interval_s=0,
        )
        app = create_app(settings)
        with (
            serve(app, lifespan="on") as url,
            httpx.Client(
                base_url=f"{url}/admin/api", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120
            ) as http,
        ):
            yield Env(url, app.state.gateway, http)


def history(gw: Gateway, days: int, model: str) -> None:
    """`days` of calls ending at the last full hour: 2 to 12 calls an hour in a daily cycle."""
    end = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    for h in range(days * 24):
        ts = end - timedelta(hours=days * 24 - h)
        for i in range(2 + 10 * (8 <= ts.hour < 20)):
            gw.writer.record(
                RequestEvent(
                    ts=ts + timedelta(seconds=i),
                    request_id=uuid.uuid4().hex,
                    client_id="t",
                    surface="gemini",
                    operation="generateContent",
                    model=model,
                    stream=False,
                    status=200,
                    outcome="success",
                    project="p1",
                    latency_ms=50.0,
                )
            )
    gw.writer.flush()


def error(r: httpx.Response, status: int, field: str | None) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err.get("field") == field
    return str(err["message"])


def test_quota_view_follows_live_traffic(env: Env) -> None:
    with httpx.Client(base_url=env.url, headers={"x-goog-api-key": CLIENT_TOKEN}) as client:
        for _ in range(3):
            r = client.post(f"/v1beta/models/{MODEL}:generateContent", json={"contents": [{"parts": [{"text": "hi"}]}]})
            assert r.status_code == 200
    # the meter samples every 10 s on its own; sample now rather than wait
    env.gw.forecast.meter.sample(env.gw.pool, datetime.now(UTC).timestamp())
    data = env.http.get("/forecast/quota").json()
    items = [i for i in data["items"] if i["model"] == MODEL]
    assert sum(i["used"] for i in items) == 3
    assert {i["project"] for i in items} == {"p1", "p2", "p3"}
    assert all(i["limit"] == 250 and i["limit_source"] == "builtin" for i in items)
    assert all(i["resets_at"].endswith("Z") for i in items)
    pool = next(p for p in data["pool"] if p["model"] == MODEL)
    assert pool["used"] == 3 and pool["limit"] == 750 and pool["projects"] == 3
    assert {"rate_per_min", "exhausts_at", "rpm_headroom", "refused_next_hour"} <= set(pool)


def test_quota_view_lists_models_as_users_name_them(env: Env) -> None:
    """countTokens (its own quota bucket `<model>#count`), model listing (the `*` bucket) and a model name no model
    answers to are counted by the pool, but the quota API lists only real models."""
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    with httpx.Client(base_url=env.url, headers={"x-goog-api-key": CLIENT_TOKEN}) as client:
        assert client.post(f"/v1beta/models/{MODEL}:countTokens", json=body).status_code == 200
        assert client.get("/v1beta/models").status_code == 200
        assert client.post("/v1beta/models/gemini-9-ultra:generateContent", json=body).status_code == 404
        assert client.post(f"/v1beta/models/{MODEL}:generateContent", json=body).status_code == 200
    pairs = {m for _s, m in env.gw.pool.tracker.pairs()}
    assert f"{MODEL}#count" in pairs and "gemini-9-ultra" in pairs  # the pool does count them (the test can fail)
    env.gw.forecast.meter.sample(env.gw.pool, datetime.now(UTC).timestamp())
    data = env.http.get("/forecast/quota").json()
    listed = {i["model"] for i in data["items"]} | {p["model"] for p in data["pool"]}
    assert MODEL in listed
    assert not {m for m in listed if m == "*" or "#" in m or m == "gemini-9-ultra"}, listed
    error(env.http.get("/forecast/demand", params={"model": f"{MODEL}#count"}), 400, "model")
    error(env.http.get("/forecast/demand", params={"model": "gemini-9-ultra"}), 400, "model")


def test_demand_series_are_real_models_only(env: Env) -> None:
    """Recorded calls for a name no model answers to count in the total but get no series of their own."""
    history(env.gw, 4, MODEL)
    history(env.gw, 4, "gemini-9-ultra")
    env.refresh()
    assert "gemini-9-ultra" not in env.gw.forecast.known_series() and MODEL in env.gw.forecast.known_series()
    error(env.http.get("/forecast/demand", params={"model": "gemini-9-ultra"}), 400, "model")
    total = env.http.get("/forecast/demand", params={"horizon_h": 24}).json()
    one = env.http.get("/forecast/demand", params={"model": MODEL, "horizon_h": 24}).json()
    assert total["status"] == one["status"] == "ok"
    assert total["history"][-1]["calls"] > one["history"][-1]["calls"]  # the junk name's calls are in the total


def test_demand_forecast_and_honest_short_history(env: Env) -> None:
    history(env.gw, 4, MODEL)
    history(env.gw, 1, "gemini-2.5-pro")
    env.refresh()
    r = env.http.get("/forecast/demand", params={"model": MODEL, "horizon_h": 24}).json()
    assert r["status"] == "ok", r
    assert len(r["points"]) == 24 and {"ts", "yhat", "lo", "hi"} <= set(r["points"][0])
    assert all(p["lo"] <= p["yhat"] <= p["hi"] for p in r["points"])
    assert {"mape", "coverage"} <= set(r["backtest"]) and r["backtest"]["holdout_h"] == 24
    assert len(r["history"]) == 4 * 24 and r["history"][-1]["calls"] > 0
    daily = env.http.get("/forecast/demand", params={"model": MODEL, "granularity": "day"}).json()
    assert daily["status"] == "ok" and len(daily["points"]) == 14
    assert daily["points"][0]["yhat"] == pytest.approx(sum(p["yhat"] for p in r["points"]), rel=1e-6)
    total = env.http.get("/forecast/demand").json()
    assert total["status"] == "ok" and total["model"] is None
    short = env.http.get("/forecast/demand", params={"model": "gemini-2.5-pro"}).json()
    assert short["status"] == "insufficient_history" and short["need_days"] == 3 and short["have_days"] == 1.0
    first = env.http.post("/forecast/refresh").json()  # routine: the backtest is not due again yet
    assert first["series"] >= 3 and first["backtest_at"] == r["backtest_at"] and first["fitted_at"] > r["fitted_at"]
    forced = env.http.post("/forecast/refresh", params={"backtest": "1"}).json()
    assert forced["backtest_at"] > first["backtest_at"]
    assert error(env.http.post("/forecast/refresh", params={"backtest": "yes"}), 400, "backtest")
    none = env.http.get("/forecast/demand", params={"model": "gemini-2.0-flash-lite"}).json()
    assert none["status"] == "insufficient_history" and none["have_days"] == 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"model": "gpt-4"}, "model"),
        ({"horizon_h": "0"}, "horizon_h"),
        ({"horizon_h": "10000"}, "horizon_h"),
        ({"horizon_h": "1e3"}, "horizon_h"),
        ({"granularity": "minute"}, "granularity"),
    ],
)
def test_demand_validation(env: Env, params: dict[str, str], field: str) -> None:
    error(env.http.get("/forecast/demand", params=params), 400, field)


def test_plan_defaults_to_the_forecast_and_explains(env: Env) -> None:
    out = env.http.post("/forecast/plan", json={"model": MODEL}).json()
    assert out["targets"]["rpm_source"] == "forecast_peak" and out["targets"]["rpd_source"] == "forecast_peak"
    assert out["projects_now"] == 3 and out["projects_needed"] >= 1
    assert any("p1" in n for n in out["notes"])  # two keys in p1 share its quota
    out = env.http.post(
        "/forecast/plan", json={"model": MODEL, "target_rpd": 1000, "remove_projects": ["p3"], "limits": {"rpd": 200}}
    ).json()
    rpd = next(r for r in out["headroom"] if r["dim"] == "rpd")
    assert rpd["capacity_before"] == 750 and rpd["capacity_after"] == 400 and rpd["headroom_after"] == -600
    assert out["projects_needed"] == 5 and out["keys_needed"] == 5 and out["projects_to_add"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "model"),
        ({"model": "nope"}, "model"),
        ({"model": MODEL, "target_rpm": -1}, "target_rpm"),
        ({"model": MODEL, "target_rpd": "many"}, "target_rpd"),
        ({"model": MODEL, "target_rpm": 1e30}, "target_rpm"),
        ({"model": MODEL, "target_rpm": True}, "target_rpm"),
        ({"model": MODEL, "remove_projects": "p1"}, "remove_projects"),
        ({"model": MODEL, "remove_projects": ["p404"]}, "remove_projects"),
        ({"model": MODEL, "limits": [1]}, "limits"),
        ({"model": MODEL, "limits": {"rpd": -5}}, "limits.rpd"),
        ({"model": MODEL, "limits": {"tpm": 5}}, "limits"),
        ({"model": MODEL, "extra": 1}, "extra"),
    ],
)
def test_plan_validation(env: Env, body: dict[str, Any], field: str) -> None:
    error(env.http.post("/forecast/plan", json=body), 400, field)


def test_forecast_routes_need_the_token(env: Env) -> None:
    assert httpx.get(f"{env.url}/admin/api/forecast/quota").status_code == 401
    assert env.http.put("/forecast/plan").status_code == 405
