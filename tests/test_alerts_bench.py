"""The alerts benchmark's evaluation part works on a small table and its summary row renders."""

from __future__ import annotations

from bench import alerts, run_all


def test_alerts_bench_evaluates_fifty_rules_and_summarises() -> None:
    e = alerts.evaluation_cost(rows=20_000, runs=2)
    assert e["rules"] == 50 and 0 < e["db_rules"] < 50 and e["eval_ms_median"] > 0
    figures = {
        "evaluation": e,
        "throughput": {
            "rps_no_rules": 100.0,
            "rps_50_rules": 97.0,
            "ratio": 0.97,
            "runs_no_rules": [],
            "runs_50_rules": [],
        },
        "load_average": [0, 0],
    }
    rows = run_all.rows_alerts(figures)
    assert rows[1][-1] == "yes" and "ms" in rows[0][2]
    assert "0.97" in alerts.report(figures)
