"""Demand forecasts on synthetic hourly series, and the capacity planner on a real pool."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest

from proxy_service.forecast.demand import HORIZON_H, forecast_many, holdout_hours
from proxy_service.forecast.engine import build_series
from proxy_service.forecast.planner import Targets, plan
from proxy_service.keys import KeySpec
from proxy_service.pool import Pool
from proxy_service.quota import ModelLimits, QuotaViolation

MODEL = "gemini-2.5-flash"


def seasonal(days: int, seed: int = 0) -> np.ndarray:
    """Daily cycle (quiet nights), quieter weekends, a slow rise and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * 24)
    hour, dow = t % 24, (t // 24) % 7
    base = 100 * (1 + 0.6 * np.sin(2 * np.pi * (hour - 8) / 24)) * np.where(dow >= 5, 0.6, 1.0)
    return np.maximum(base * (1 + 0.002 * t / 24) + rng.normal(0, 6, t.size), 0)


def test_daily_and_weekly_seasonality_forecast_within_error_and_interval() -> None:
    y = seasonal(35)
    res = forecast_many({"m": y, "flat": np.full(35 * 24, 50.0) + np.random.default_rng(1).normal(0, 2, 35 * 24)})
    r = res["m"]
    assert r["status"] == "ok" and "168 h" in r["method"]
    bt = r["backtest"]
    assert bt["holdout_h"] == 168
    assert bt["mape"] <= 0.15, bt
    assert bt["coverage"] >= 0.80, bt
    assert len(r["yhat"]) == len(r["lo"]) == len(r["hi"]) == HORIZON_H
    assert all(lo <= yh <= hi for lo, yh, hi in zip(r["lo"], r["yhat"], r["hi"], strict=True))
    # the forecast keeps the shape: the afternoon peak is far above the night in the next 24 hours
    day = np.array(r["yhat"][:24])
    assert day.max() > 2 * max(day.min(), 1)
    assert res["flat"]["backtest"]["mape"] <= 0.1


def test_little_history_is_answered_honestly() -> None:
    res = forecast_many({"short": np.ones(47), "none": np.zeros(200), "three": seasonal(3)})
    assert res["short"] == {"status": "insufficient_history", "need_days": 3, "have_days": 2.0}
    assert res["none"]["status"] == "insufficient_history"
    assert res["three"]["status"] == "ok" and res["three"]["backtest"]["holdout_h"] == 24


def test_holdout_grows_with_history() -> None:
    assert [holdout_hours(d * 24) for d in (3, 6, 10, 16, 90)] == [24, 48, 96, 168, 168]


def test_build_series_fills_gaps_and_stops_at_the_last_complete_hour() -> None:
    t0 = datetime(2026, 9, 1)
    rows = [(t0, "", 3), (t0, "a", 3), (t0 + timedelta(hours=2), "", 5), (t0 + timedelta(hours=5), "", 9)]
    out = build_series(rows, t0 + timedelta(hours=4))
    assert out[""] == (t0, [3.0, 0.0, 5.0, 0.0])
    assert out["a"] == (t0, [3.0, 0.0, 0.0, 0.0])


def _pool(limits: dict[str, ModelLimits] | None = None) -> Pool:
    pool = Pool(limits=limits)
    pool.add([KeySpec("k1", "p1"), KeySpec("k2", "p1"), KeySpec("k3", "p2"), KeySpec("k4", "p3")])
    return pool


def test_planner_counts_projects_not_keys() -> None:
    pool = _pool({MODEL: ModelLimits(rpm=10, rpd=1000)})
    out = plan(pool, MODEL, Targets(25, 3500, "given", "given"))
    assert out["projects_now"] == 3
    assert out["projects_needed"] == 4 and out["keys_needed"] == 4  # rpd: 3500 / 1000 → 4; rpm: 25 / 10 → 3
    assert out["projects_to_add"] == 1
    rpd = next(r for r in out["headroom"] if r["dim"] == "rpd")
    assert rpd["capacity_before"] == 3000 and rpd["headroom_before"] == -500
    assert out["idle_keys"] == [
        {"project": "p1", "keys": [k.id for k in pool.keys.values() if k.project == "p1"], "extra": 1}
    ]
    assert any("p1" in n and "add no capacity" in n for n in out["notes"])


def test_planner_what_if_remove_and_limit_change() -> None:
    pool = _pool({MODEL: ModelLimits(rpm=10, rpd=1000)})
    out = plan(pool, MODEL, Targets(None, 2000, None, "given"), remove_projects=["p3"], limit_rpd=500)
    rpd = next(r for r in out["headroom"] if r["dim"] == "rpd")
    assert rpd["capacity_before"] == 3000 and rpd["capacity_after"] == 1000
    assert rpd["headroom_before"] == 1000 and rpd["headroom_after"] == -1000
    assert out["projects_after"] == 2 and out["projects_needed"] == 4 and out["projects_to_add"] == 2
    assert [p["removed"] for p in out["projects"]] == [False, False, True]


def test_planner_uses_learned_limits_and_reports_zero_quota() -> None:
    pool = _pool()
    key = next(k for k in pool.keys.values() if k.project == "p2")
    pool.started(key, MODEL)
    pool.rate_limited(key, MODEL, QuotaViolation("day", "GenerateRequestsPerDayPerProjectPerModel", 30, 0, MODEL))
    out = plan(pool, MODEL, Targets(1, 10, "given", "given"))
    p2 = next(p for p in out["projects"] if p["project"] == "p2")
    assert p2["rpd"] == 0 and p2["rpd_source"] == "learned"
    # two projects still have the built-in 250/day: the median project decides
    assert out["per_project"]["rpd"] == 250 and out["projects_needed"] == 1


@pytest.mark.parametrize("limit", [0])
def test_planner_zero_limit_everywhere(limit: int) -> None:
    out = plan(_pool(), MODEL, Targets(5, None, "given", None), limit_rpm=limit)
    assert out["projects_needed"] is None and any("no quota" in n for n in out["notes"])


def test_routine_refresh_reuses_the_full_runs_backtest_and_band_factor() -> None:
    y = seasonal(21, seed=4)
    full = forecast_many({"m": y})["m"]
    known = {"m": {k: full[k] for k in ("backtest", "daily_backtest", "scale")}}
    routine = forecast_many({"m": y}, known=known)["m"]
    assert routine["backtest"] == full["backtest"] and routine["scale"] == full["scale"]
    assert routine["yhat"] == pytest.approx(full["yhat"])  # the same final fit
    assert routine["hi"] == pytest.approx(full["hi"], rel=1e-3)  # (the carried factor is rounded)
    narrow = forecast_many({"m": y}, known={"m": {**known["m"], "scale": 1.0}})["m"]
    width = np.subtract(routine["hi"], routine["lo"]).sum()
    assert np.subtract(narrow["hi"], narrow["lo"]).sum() < width  # the known factor widens the band
