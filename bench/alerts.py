"""Alert evaluation cost and its effect on proxy throughput (issue 14).

1. Evaluation cost, in process: a DuckDB file with `--rows` requests (and as many attempts) spread over 7 days, the
   last hour dense, and a pool of 1,000 keys; 50 enabled rules of every metric family, windows 1 min – 1 h, some
   filtered or grouped. One evaluation = the database figures (worker thread in the proxy) + the pool figures.
   Reported: ms per evaluation (median and p95 of `--runs`), and the distinct queries it ran.
2. Proxy throughput at c=32 with 50 enabled rules evaluated every second (15x the default rate: the worst case)
   against the same proxy with no rule enabled, measured alternately (none, rules, none, rules) in one run.
   Target: ratio >= 0.95.

    python -m bench.alerts [--rows 2000000] [--runs 10] [--duration 8] [--warmup 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    ADMIN_TOKEN,
    NO_LIMITS,
    RESULTS,
    closed_loop,
    generate_path,
    load_average,
    markdown_table,
    start_fake,
    start_proxy,
    wait_ready,
    write_json,
)
from proxy_service.alerts import sources
from proxy_service.alerts.rules import Rule, parse_rule
from proxy_service.demo.scenario import demo_key
from proxy_service.keys import KeySpec
from proxy_service.pool import Pool
from proxy_service.store import Store

TARGET_RATIO = 0.95
POOL_KEYS = ",".join(f"p{i // 2 + 1}:{demo_key(f'bench-key-{i:02d}')}" for i in range(8))
MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash", "gemini-2.5-flash-lite")


def fifty_rules() -> list[dict[str, Any]]:
    """50 rule bodies across the catalogue, windows and groupings an operator would use."""
    shapes: list[dict[str, Any]] = [
        {"metric": "success_rate", "op": "<", "threshold": 0.9},
        {"metric": "error_rate", "op": ">", "threshold": 0.1},
        {"metric": "exhausted_rate", "op": ">", "threshold": 0.05},
        {"metric": "upstream_error_rate", "op": ">", "threshold": 0.05},
        {"metric": "upstream_429_rate", "op": ">", "threshold": 0.3},
        {"metric": "attempts_per_call", "op": ">", "threshold": 1.5},
        {"metric": "p95_latency_ms", "op": ">", "threshold": 30_000},
        {"metric": "p95_ttft_ms", "op": ">", "threshold": 10_000},
        {"metric": "calls", "op": "<", "threshold": 1},
        {"metric": "calls_vs_last_week", "op": "<", "threshold": 0.3},
        {"metric": "invalid_keys", "op": ">", "threshold": 0},
        {"metric": "active_keys", "op": "<", "threshold": 1},
        {"metric": "cooling_keys", "op": ">", "threshold": 100},
        {"metric": "quota_day_usage_pct", "op": ">", "threshold": 90},
        {"metric": "key_flaps", "op": ">", "threshold": 3},
    ]
    windows = (60, 300, 900, 3600)
    out = []
    for i in range(50):
        shape = dict(shapes[i % len(shapes)])
        body: dict[str, Any] = {
            "name": f"bench rule {i}",
            "window_s": windows[i % len(windows)],
            "for_s": 60,
            "severity": "warning",
            **shape,
        }
        requestish = shape["metric"] not in (
            "invalid_keys",
            "active_keys",
            "cooling_keys",
            "quota_day_usage_pct",
            "key_flaps",
            "calls_vs_last_week",
        )
        if requestish and i % 3 == 1:
            body["filters"] = {"model": MODELS[i % len(MODELS)]}
        if requestish and i % 3 == 2:
            body["group_by"] = "model"
        out.append(body)
    return out


def _fill(store: Store, rows: int) -> None:
    """`rows` requests and attempts over 7 days; 10 % of them in the last hour (a busy hour on a large table)."""
    cur = store.cursor()
    now = datetime.now(UTC).replace(tzinfo=None)
    recent = rows // 10
    for table, extra in (
        (
            "requests",
            """, 'gemini' AS surface, 'generateContent' AS operation, false AS stream,
            CASE WHEN i % 10 = 0 THEN 'exhausted' ELSE 'success' END AS outcome,
            CASE WHEN i % 10 = 0 THEN 429 ELSE 200 END AS status, 1 + (i % 3 = 0)::INT AS attempts,
            20 + (i % 500) AS latency_ms, NULL AS ttfb_ms""",
        ),
        (
            "attempts",
            """, 1 AS attempt, CASE WHEN i % 7 = 0 THEN 'rate_limited' ELSE 'ok' END AS outcome,
            CASE WHEN i % 7 = 0 THEN 429 ELSE 200 END AS upstream_status, 20.0 AS latency_ms""",
        ),
    ):
        cur.execute(
            f"""
            INSERT INTO {table} BY NAME
            SELECT CASE WHEN i < ? THEN ?::TIMESTAMP - to_seconds(i * 3600.0 / ?)
                        ELSE ?::TIMESTAMP - to_seconds(3600 + (i - ?) * (6 * 86400.0) / ?) END AS ts,
                   'r' || i AS request_id, 'k' || (i % 1000) AS key_id, 'p' || (i % 50) AS project,
                   ['gemini-2.5-flash', 'gemini-2.5-pro', 'gemini-2.0-flash', 'gemini-2.5-flash-lite'][1 + i % 4]
                       AS model{extra}
            FROM range(?) t(i) ORDER BY ts""",
            [recent, now, recent, now, recent, rows - recent, rows],
        )
    cur.close()


def evaluation_cost(rows: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keyrack-bench-alerts-") as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        started = time.perf_counter()
        _fill(store, rows)
        fill_s = time.perf_counter() - started
        pool = Pool()
        pool.add(KeySpec(f"AIza{'x' * 31}{i:04d}", project=f"p{i % 50}") for i in range(1000))
        rules: list[Rule] = [parse_rule(b) for b in fifty_rules()]
        db_rules = [
            r
            for r in rules
            if r.metric not in ("invalid_keys", "active_keys", "cooling_keys", "quota_day_usage_pct", "key_flaps")
        ]
        flaps = sources.FlapCounter()
        times = []
        for _ in range(runs):
            now = time.time()
            t0 = time.perf_counter()
            cur = store.cursor()
            try:
                sources.database_values(cur, db_rules, now)
            finally:
                cur.close()
            flaps.observe(pool, now)
            sources.live_values(pool, rules, {}, flaps, now)
            times.append((time.perf_counter() - t0) * 1000)
        store.close()
    times.sort()
    return {
        "rows": rows,
        "fill_s": round(fill_s, 1),
        "rules": len(rules),
        "db_rules": len(db_rules),
        "runs": runs,
        "eval_ms_median": round(statistics.median(times), 1),
        "eval_ms_p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
        "eval_ms_min": round(times[0], 1),
    }


def _throughput(workdir: Path, fake_url: str, name: str, rules: bool, duration: float, warmup: float) -> float:
    proxy = start_proxy(
        workdir, fake_url, POOL_KEYS, model_limits=NO_LIMITS, name=name, env={"KEYRACK_ALERT_INTERVAL_S": "1"}
    )
    try:
        wait_ready([proxy])
        if rules:
            headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            for body in fifty_rules():
                httpx.post(f"{proxy.url}/admin/api/alerts/rules", json=body, headers=headers).raise_for_status()
        if warmup > 0:
            closed_loop(proxy.url + generate_path(), concurrency=8, duration=warmup)
        return closed_loop(proxy.url + generate_path(), concurrency=32, duration=duration).rps
    finally:
        proxy.stop()


def throughput(duration: float, warmup: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="keyrack-bench-alerts-") as tmp:
        workdir = Path(tmp)
        fake = start_fake(workdir)
        try:
            wait_ready([fake])
            none, with_rules = [], []
            for i in range(2):  # alternate, so drift in the machine's load hits both sides alike
                none.append(_throughput(workdir, fake.url, f"none{i}", False, duration, warmup))
                with_rules.append(_throughput(workdir, fake.url, f"rules{i}", True, duration, warmup))
        finally:
            fake.stop()
    a, b = statistics.mean(none), statistics.mean(with_rules)
    return {
        "rps_no_rules": round(a, 1),
        "rps_50_rules": round(b, 1),
        "runs_no_rules": [round(x, 1) for x in none],
        "runs_50_rules": [round(x, 1) for x in with_rules],
        "ratio": round(b / a, 3) if a else 0.0,
        "duration_s": duration,
    }


def report(f: dict[str, Any]) -> str:
    e, t = f["evaluation"], f["throughput"]
    table = markdown_table(
        ["figure", "value"],
        [
            ["rows in requests (and attempts)", f"{e['rows']:,}"],
            ["enabled rules (database-backed)", f"{e['rules']} ({e['db_rules']})"],
            ["ms per evaluation, median / p95", f"{e['eval_ms_median']} / {e['eval_ms_p95']}"],
            ["proxy req/s at c=32, no rules", t["rps_no_rules"]],
            ["proxy req/s at c=32, 50 rules every 1 s", t["rps_50_rules"]],
            ["ratio (target >= 0.95)", t["ratio"]],
        ],
    )
    return "\n".join(
        [
            "### Alerts: evaluation cost and proxy throughput",
            "",
            table,
            "",
            f"- load average before / after: {f['load_average'][0]} / {f['load_average'][1]} (2 cores)",
            f"- throughput runs (alternating): none {t['runs_no_rules']}, rules {t['runs_50_rules']}",
            f"- target ratio >= {TARGET_RATIO}: {'met' if t['ratio'] >= TARGET_RATIO else 'MISSED'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="requests rows in the evaluation table")
    ap.add_argument("--runs", type=int, default=10, help="evaluations timed")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per throughput run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--json", type=Path, default=RESULTS / "alerts.json")
    args = ap.parse_args(argv)
    before = load_average()
    figures = {
        "evaluation": evaluation_cost(args.rows, args.runs),
        "throughput": throughput(args.duration, args.warmup),
    }
    figures["load_average"] = [before, load_average()]
    figures["targets"] = {
        "ratio": {"target": f">= {TARGET_RATIO}", "met": figures["throughput"]["ratio"] >= TARGET_RATIO}
    }
    print(report(figures))
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
