"""Dashboard first-render time per page at scale: 1,000 keys and 1,000,000 request rows.

    python -m bench.dashboard_render [--rows 1000000] [--keys 1000] [--repeat 3]

The proxy's DuckDB file is seeded with synthetic rows by DuckDB SQL before the proxy starts (1M rows in a few
seconds), then `keyrack serve` runs as its own process (with the fake upstream) and each dashboard page is
rendered by Streamlit's AppTest in this process, through the admin API exactly as in production. "first" is a
fresh session's first render of that page (for Monitor, the landing page, sign-in included; for the others, the
first visit right after sign-in: only the config answer is already cached), "warm" a rerun of the same session
right after (the session cache is bypassed: every API call is made again). Target: first render ≤ 2 s per page.
Beside it, the real-browser figure for Trends (`dashboard_browser.py`: a real dashboard server and headless
Chromium, from the click on Trends to its last chart drawn); `--browser 0` leaves it out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import dashboard_browser
from bench.common import (
    ADMIN_TOKEN,
    RESULTS,
    markdown_table,
    running,
    start_fake,
    start_proxy,
    wait_ready,
    write_json,
)
from proxy_service.demo.scenario import demo_key

PAGES = ["monitor", "trends", "error_logs", "config", "sql"]
TARGET_S = 2.0
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-2.0-flash"]


def seed(db_path: Path, rows: int, keys: list[tuple[str, str]]) -> float:
    """Synthetic requests / attempts / error logs over the last 30 days, straight into the (not yet served) file."""
    from proxy_service.store import Store

    started = time.perf_counter()
    store = Store(db_path)  # creates the schema exactly as the proxy does
    cur = store.cursor()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
    ids, projects = [k for k, _ in keys], [p for _, p in keys]
    span = 30 * 86400
    cur.execute(
        f"""
        INSERT INTO requests BY NAME
        SELECT TIMESTAMP '{now}' - to_seconds(CAST(i * {span} // {rows} AS BIGINT)) AS ts,
               'req-' || i AS request_id, 'bench' AS client_id, 'gemini' AS surface,
               'generateContent' AS operation, $models[1 + i % 4] AS model, i % 5 = 0 AS stream,
               CASE WHEN i % 20 = 0 THEN 429 WHEN i % 33 = 0 THEN 503 ELSE 200 END AS status,
               CASE WHEN i % 20 = 0 THEN 'exhausted' WHEN i % 33 = 0 THEN 'upstream_error' ELSE 'success' END
                   AS outcome,
               1 + (i % 3 = 0)::INT AS attempts, $ids[1 + i % {len(ids)}] AS key_id,
               $projects[1 + i % {len(ids)}] AS project, 80 + (i * 7919) % 2400 AS latency_ms,
               40 + (i * 104729) % 400 AS ttfb_ms, 20 + i % 500 AS prompt_tokens, (i * 31) % 900 AS output_tokens,
               0 AS thinking_tokens, 0 AS cached_tokens, 20 + i % 500 + (i * 31) % 900 AS total_tokens,
               400 AS request_bytes, 1800 AS response_bytes
        FROM range({rows}) t(i)
        """,
        {"models": MODELS, "ids": ids, "projects": projects},
    )
    cur.execute(
        """
        INSERT INTO attempts BY NAME
        SELECT ts, request_id, 1 AS attempt, key_id, project, model, status AS upstream_status, latency_ms,
               CASE status WHEN 200 THEN 'ok' WHEN 429 THEN 'rate_limited' ELSE 'server_error' END AS outcome,
               CASE WHEN status = 429 THEN 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier' END AS quota_id
        FROM requests
        """
    )
    cur.execute(
        """
        INSERT INTO error_logs BY NAME
        SELECT 'err-' || request_id AS id, ts, request_id, key_id, model, status,
               CASE status WHEN 429 THEN 'rate_limited' ELSE 'upstream_error' END AS error_type,
               'synthetic ' || status || ' for ' || model AS message,
               '{"error": {"code": ' || status || ', "message": "synthetic"}}' AS upstream_body
        FROM requests WHERE status <> 200
        """
    )
    cur.close()
    store.close()
    return time.perf_counter() - started


def render(page: str, timeout: float) -> tuple[float, float, list[str]]:
    """(first render s, warm rerun s, problems shown on the page) for one fresh AppTest session, opened with the
    dashboard tests' own harness (tests/dashboard/conftest.py)."""
    from tests.dashboard.conftest import go, new_session, sign_in

    at = new_session(timeout=timeout)
    started = time.perf_counter()
    sign_in(at, ADMIN_TOKEN, check=False)  # sign-in and the landing page, Monitor
    if page != "monitor":
        started = time.perf_counter()
        go(at, page)
    first = time.perf_counter() - started
    at.session_state["_cache"] = {}  # the warm rerun makes every API call again
    started = time.perf_counter()
    at.run()
    warm = time.perf_counter() - started
    problems = [e.message for e in at.exception] + [str(e.value) for e in at.error]
    return first, warm, problems


def trends_calls(admin_url: str, rounds: int) -> dict[str, float]:
    """The Trends page's admin calls one after another (as before `cache.prefetch`) and side by side (as now),
    alternating in the same run against the same proxy: medians and their ratio."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import timedelta

    from dashboard.logic import times, trends_data
    from dashboard.logic.client import AdminClient

    api = AdminClient(admin_url, ADMIN_TOKEN, timeout=120.0)
    today = times.today()
    lo, hi = times.day_range_utc(today - timedelta(days=6), today)
    calls = trends_data.page_calls(api, "hour", lo, hi, trends_data.DIMENSIONS[0])
    serial, together = [], []
    with ThreadPoolExecutor(len(calls)) as pool:
        for _ in range(rounds):
            started = time.perf_counter()
            for method, call_args in calls:
                method(*call_args)
            serial.append(time.perf_counter() - started)
            started = time.perf_counter()
            for future in [pool.submit(method, *call_args) for method, call_args in calls]:
                future.result()
            together.append(time.perf_counter() - started)
    s, p = statistics.median(serial), statistics.median(together)
    return {"calls": len(calls), "serial_s": round(s, 3), "side_by_side_s": round(p, 3), "ratio": round(p / s, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="fresh sessions per page (the median is reported)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per render, seconds")
    parser.add_argument(
        "--browser", type=int, default=3, help="fresh Chromium sessions visiting Trends (0: no browser figure)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="keyrack-dash-bench-"))
    keys = [(demo_key(f"bench-key-{i:05d}"), f"proj-{i % 40:02d}") for i in range(args.keys)]
    from proxy_service.keys import key_id

    data_dir = workdir / "proxy-data"
    data_dir.mkdir(parents=True)
    seeded_s = seed(data_dir / "keyrack.duckdb", args.rows, [(key_id(s), p) for s, p in keys])
    print(f"seeded {args.rows:,} requests (+ attempts, error logs) for {args.keys:,} keys in {seeded_s:.1f} s")

    fake = start_fake(workdir)
    proxy = start_proxy(
        workdir, fake.url, ",".join(f"{p}:{s}" for s, p in keys), env={"KEYRACK_RECHECK_INTERVAL_S": "86400"}
    )
    results: list[dict[str, object]] = []
    with running(fake, proxy):
        wait_ready([fake, proxy])
        os.environ["KEYRACK_ADMIN_URL"] = proxy.url
        os.environ["KEYRACK_ADMIN_TOKEN"] = ADMIN_TOKEN
        render("monitor", args.timeout)  # warm-up: imports, Streamlit caches, DuckDB's first scans
        for page in PAGES:
            firsts, warms, problems = [], [], []
            for _ in range(args.repeat):
                first, warm, shown = render(page, args.timeout)
                firsts.append(first)
                warms.append(warm)
                problems += shown
            first_med = sorted(firsts)[len(firsts) // 2]
            results.append(
                {
                    "page": page,
                    "first_s": round(first_med, 3),
                    "first_max_s": round(max(firsts), 3),
                    "warm_s": round(sorted(warms)[len(warms) // 2], 3),
                    "ok": first_med <= TARGET_S and not problems,
                    "problems": sorted(set(problems))[:3],
                }
            )
        calls = trends_calls(proxy.url, 5)
        browser: dict[str, float] | None = None
        if args.browser > 0 and dashboard_browser.available():
            figures = dashboard_browser.trends_first_visit(workdir / "dashboard", proxy.url, args.browser)
            browser = dashboard_browser.summary(figures)
    print(f"\nDashboard first render, {args.keys:,} keys / {args.rows:,} request rows (target ≤ {TARGET_S:.0f} s)\n")
    print(
        markdown_table(
            ["page", "first render (median)", "first render (max)", "warm rerun", "target met", "problems shown"],
            [
                [
                    r["page"],
                    f"{r['first_s']:.2f} s",
                    f"{r['first_max_s']:.2f} s",
                    f"{r['warm_s']:.2f} s",
                    "yes" if r["ok"] else "NO",
                    "; ".join(r["problems"]) or "–",
                ]
                for r in results
            ],  # type: ignore[arg-type]
        )
    )
    print(
        f"\nTrends' {calls['calls']:.0f} admin calls, same run, 5 alternating rounds: one after another "
        f"{calls['serial_s']:.2f} s, side by side {calls['side_by_side_s']:.2f} s (ratio {calls['ratio']:.2f})"
    )
    if browser is not None:
        print(
            f"\nTrends first visit in Chromium (click to last chart drawn, {args.browser} fresh sessions): "
            f"median {browser['median_s']:.2f} s, max {browser['max_s']:.2f} s"
        )
    write_json(
        RESULTS / "dashboard_render.json",
        {"rows": args.rows, "keys": args.keys, "pages": results, "browser_trends": browser, "trends_calls": calls},
    )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
