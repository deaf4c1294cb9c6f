"""Admin API: statistics (proxy_service/admin/stats.py) — summary windows, series in the display zone, top."""

from __future__ import annotations

import io
from datetime import datetime, timedelta

import pyarrow as pa

from tests.admin.conftest import (
    P1_B,
    Env,
    assert_no_secret,
    error_of,
    now,
    req,
)


def test_stats_summary(env: Env) -> None:
    t = now()
    env.record(
        req(t - timedelta(seconds=20), "k_s1", model="m-sum", latency_ms=100),
        req(t - timedelta(minutes=20), "k_s1", model="m-sum", outcome="upstream_error", status=503, latency_ms=300),
        req(t - timedelta(hours=3), "k_s1", model="m-sum", latency_ms=200),
    )
    s = env.get("/stats/summary").json()
    assert set(s["windows"]) == {"1m", "1h", "24h", "month"} and s["timezone"] == "UTC"
    w1, w60 = s["windows"]["1m"], s["windows"]["1h"]
    assert w1["calls"] >= 1 and w60["calls"] >= w1["calls"] + 1 and w60["failures"] >= 1
    assert {
        "success_rate",
        "avg_latency_ms",
        "p95_latency_ms",
        "prompt_tokens",
        "output_tokens",
        "total_tokens",
    } <= set(w1)
    assert s["windows"]["24h"]["calls"] >= w60["calls"] + 1
    assert s["keys"] == env.gw.pool.counts()


def test_stats_series_json_and_arrow_in_the_display_zone(env: Env) -> None:
    env.http.patch("/admin/api/config", json={"display_timezone": "Asia/Shanghai"})
    try:
        # 23:59:59.9 and 00:00:00 Shanghai time on either side of a day boundary.
        env.record(
            req(datetime(2025, 3, 10, 15, 59, 59, 900000), "k_t1", model="m-series"),
            req(datetime(2025, 3, 10, 16, 0, 0), "k_t1", model="m-series"),
            req(datetime(2025, 3, 10, 16, 30, 0), "k_t2", model="m-series"),
        )
        params = {"granularity": "day", "from": "2025-03-09T00:00:00Z", "to": "2025-03-12T00:00:00Z"}
        s = env.get("/stats/series", params=params).json()
        assert s["timezone"] == "Asia/Shanghai" and s["granularity"] == "day"
        assert [(r["bucket"], r["calls"]) for r in s["rows"]] == [
            ("2025-03-10T00:00:00+08:00", 1),
            ("2025-03-11T00:00:00+08:00", 2),
        ]
        row = s["rows"][1]
        assert {
            "group",
            "successes",
            "failures",
            "success_rate",
            "p50_latency_ms",
            "p95_latency_ms",
            "total_tokens",
        } <= set(row)
        by_key = env.get("/stats/series", params={**params, "group_by": "key"}).json()["rows"]
        assert sorted((r["group"], r["calls"]) for r in by_key) == [("k_t1", 1), ("k_t1", 1), ("k_t2", 1)]
        r = env.get("/stats/series", params={**params, "format": "arrow", "group_by": "model"})
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
        table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
        assert table.schema.field("bucket").type == pa.timestamp("us", tz="Asia/Shanghai")
        assert table.column("calls").to_pylist() == [1, 2] and table.column("group").to_pylist() == ["m-series"] * 2
    finally:
        env.post("/config/reset")
    for params, field in (
        ({"granularity": "minute"}, "granularity"),
        ({"group_by": "color"}, "group_by"),
        ({"from": "2025-02-01", "to": "2025-01-01"}, "from"),
        ({"format": "csv"}, "format"),
    ):
        r = env.get("/stats/series", params=params)
        assert r.status_code == 400 and error_of(r)["field"] == field
    r = env.get("/stats/series", params={"granularity": "hour", "from": "2000-01-01", "to": "2026-01-01"})
    assert r.status_code == 400 and "too many hour buckets" in error_of(r)["message"]


def test_stats_top(env: Env) -> None:
    t = datetime(2025, 6, 1, 12)
    kid = env.id_of(P1_B)
    env.record(*(req(t, kid, model="m-top-a") for _ in range(3)), req(t, "k_other", model="m-top-b"))
    span = {"from": "2025-06-01T00:00:00Z", "to": "2025-06-02T00:00:00Z"}
    keys = env.get("/stats/top", params={**span, "dim": "key"}).json()["items"]
    assert [(k["name"], k["calls"]) for k in keys] == [(kid, 3), ("k_other", 1)]
    assert keys[0]["project"] == "p1"
    models = env.get("/stats/top", params={**span, "dim": "model", "limit": 1}).json()["items"]
    assert [(m["name"], m["calls"]) for m in models] == [("m-top-a", 3)]
    assert env.get("/stats/top", params={"dim": "project"}).status_code == 400


def test_no_secret_in_any_answer_or_log(env: Env) -> None:
    assert_no_secret(env)
