"""Quota exhaustion projection from the pool's own counters, with an injected clock."""

from __future__ import annotations

import datetime

import pytest

from proxy_service.forecast.exhaustion import RateMeter, project_exhaustion, quota_view, refused_next_hour
from proxy_service.keys import KeySpec
from proxy_service.pool import Pool
from proxy_service.quota import PACIFIC, ModelLimits

MODEL = "gemini-2.5-flash"
DAY = datetime.date(2026, 9, 21)


def pt(hour: int, minute: int = 0) -> float:
    return datetime.datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=PACIFIC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pool(limits: dict[str, ModelLimits] | None, specs: list[KeySpec]) -> tuple[Pool, Clock]:
    clock = Clock(pt(0))
    pool = Pool("quota_aware", clock=clock, limits=limits)
    pool.add(specs)
    return pool, clock


def call(pool: Pool, model: str = MODEL) -> None:
    key = pool.choose(model)
    pool.started(key, model)
    pool.finished(key)
    pool.succeeded(key, model)


def run_steady(pool: Pool, clock: Clock, meter: RateMeter, until: float, every_s: float) -> None:
    """One call every `every_s` seconds from the current clock to `until`, the meter sampling about every 10 s."""
    next_sample = clock.now
    while clock.now < until:
        if clock.now >= next_sample:
            meter.sample(pool, clock.now)
            next_sample += 10.0
        call(pool)
        clock.now += every_s
    meter.sample(pool, clock.now)


def test_sixty_percent_by_noon_runs_out_at_about_eight_pm_pacific() -> None:
    # 1,200 calls a day allowed; one call a minute from midnight is 720 (60 %) by noon, the rest gone by 20:00.
    pool, clock = make_pool({MODEL: ModelLimits(rpm=100, rpd=1200)}, [KeySpec("k1", "p1")])
    meter = RateMeter()
    run_steady(pool, clock, meter, pt(12), 60.0)
    view = quota_view(pool, meter, clock.now)
    item = next(i for i in view["items"] if i["project"] == "p1")
    assert item["used"] == 720 and item["limit"] == 1200 and item["limit_source"] == "configured"
    assert item["rate_per_min"] == pytest.approx(1.0, rel=0.02)  # the half-hour average of a steady rate
    assert abs(item["exhausts_at"] - pt(20)) <= 600
    assert item["resets_at"] == pt(0) + 86400
    pool_row = view["pool"][0]
    assert pool_row["model"] == MODEL and abs(pool_row["exhausts_at"] - pt(20)) <= 600
    assert view["soonest"]["model"] == MODEL


def test_slow_pool_lasts_until_reset_and_builtin_source() -> None:
    pool, clock = make_pool(None, [KeySpec("k1", "p1"), KeySpec("k2", "p2")])
    meter = RateMeter()
    clock.now = pt(10)
    run_steady(pool, clock, meter, pt(11), 600.0)  # 6 calls an hour: far below 2 × 250 a day
    view = quota_view(pool, meter, clock.now)
    assert {i["project"] for i in view["items"]} == {"p1", "p2"}
    assert all(i["exhausts_at"] is None and i["limit_source"] == "builtin" for i in view["items"])
    assert view["pool"][0]["limit"] == 500 and view["pool"][0]["projects"] == 2
    assert view["soonest"] is None


def test_rate_follows_a_change_of_pace_and_pool_sums_projects() -> None:
    pool, clock = make_pool({MODEL: ModelLimits(rpm=100, rpd=2000)}, [KeySpec("k1", "p1"), KeySpec("k2", "p2")])
    meter = RateMeter()
    clock.now = pt(8)
    run_steady(pool, clock, meter, pt(9), 30.0)  # 2/min for an hour
    run_steady(pool, clock, meter, pt(11), 10.0)  # then 6/min: the half-hour average has caught up after two hours
    view = quota_view(pool, meter, clock.now)
    pool_row = view["pool"][0]
    assert pool_row["rate_per_min"] == pytest.approx(6.0, rel=0.05)
    assert pool_row["limit"] == 4000 and pool_row["used"] == 120 + 720
    expected = clock.now + (4000 - 840) / 6.0 * 60
    assert abs(pool_row["exhausts_at"] - expected) < 600


def test_learned_limit_is_labelled_and_project_less_key_is_its_own_scope() -> None:
    from proxy_service.quota import QuotaViolation

    pool, clock = make_pool(None, [KeySpec("k1")])
    meter = RateMeter()
    clock.now = pt(9)
    call(pool)
    call(pool)
    key = next(iter(pool.keys.values()))
    pool.started(key, MODEL)
    pool.rate_limited(
        key, MODEL, QuotaViolation("day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", 30, 50, MODEL)
    )
    meter.sample(pool, clock.now)
    view = quota_view(pool, meter, clock.now)
    item = view["items"][0]
    assert item["project"] is None and item["key_id"] == key.id
    assert item["limit"] == 50 and item["limit_source"] == "learned"


def test_projection_edges() -> None:
    now, reset = pt(12), pt(0) + 86400
    assert project_exhaustion(10, None, 5.0, now, reset) is None  # no limit known
    assert project_exhaustion(100, 100, 0.0, now, reset) == now  # already out
    assert project_exhaustion(10, 100, 0.0, now, reset) is None  # idle
    assert project_exhaustion(10, 100, 1.0, now, reset) == now + 90 * 60


def test_refused_next_hour() -> None:
    now, reset = pt(12), pt(0) + 86400
    assert refused_next_hour(20.0, 15, None, now, reset) == 300  # 5/min over the RPM cap for 60 minutes
    assert refused_next_hour(10.0, 15, now + 1800, now, reset) == 300  # out for the day after 30 minutes
    assert refused_next_hour(10.0, None, None, now, reset) == 0
    # runs out 20 minutes before the reset, 10 minutes from now: only those 20 minutes are lost, not 50
    assert refused_next_hour(10.0, None, reset - 1200, reset - 1800, reset) == 200


def test_alert_metric_minutes_before_reset_follows_the_same_projection() -> None:
    """The alerts' "projected exhaustion before reset" metric: 60 % used by noon at a steady rate runs out at about
    20:00 PT, four hours (240 min) before the Pacific reset; a slow pool lasts (0), and so does any pool when no
    rate is known."""
    from proxy_service.alerts.rules import parse_rule
    from proxy_service.alerts.sources import FlapCounter, live_values

    rule = parse_rule(
        {
            "name": "runs out",
            "metric": "exhaustion_before_reset_min",
            "op": ">",
            "threshold": 0,
            "window_s": 60,
            "for_s": 0,
            "severity": "warning",
            "channels": [],
            "group_by": "project",
        }
    )
    pool, clock = make_pool({MODEL: ModelLimits(rpm=100, rpd=1200)}, [KeySpec("k1", "p1")])
    meter = RateMeter()
    run_steady(pool, clock, meter, pt(12), 60.0)
    values = live_values(pool, [rule], {}, FlapCounter(), clock.now, meter.per_min)[rule.id]
    item = next(i for i in quota_view(pool, meter, clock.now)["items"] if i["project"] == "p1")
    assert values[(("project", "p1"),)] == pytest.approx((item["resets_at"] - item["exhausts_at"]) / 60.0, abs=0.01)
    assert abs(values[(("project", "p1"),)] - 240.0) <= 10.0
    # No rate known (the forecast's meter not sampled yet): nothing is projected to run out.
    assert live_values(pool, [rule], {}, FlapCounter(), clock.now)[rule.id] == {(("project", "p1"),): 0.0}
    # A slow pool lasts until the reset.
    slow, slow_clock = make_pool({MODEL: ModelLimits(rpm=100, rpd=1200)}, [KeySpec("k2", "p2")])
    slow_meter = RateMeter()
    slow_clock.now = pt(10)
    run_steady(slow, slow_clock, slow_meter, pt(11), 600.0)
    assert live_values(slow, [rule], {}, FlapCounter(), slow_clock.now, slow_meter.per_min)[rule.id] == {
        (("project", "p2"),): 0.0
    }
