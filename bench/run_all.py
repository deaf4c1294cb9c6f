"""Every benchmark, one summary table (`make bench`).

Runs each benchmark as its own process (a failing or missing one does not stop the others), reads the figures it
leaves in bench/results/<name>.json, and prints ONE table — proxy throughput and latency, event-writer rate,
quota pressure, analytics query times, dashboard render times — each with its baseline and target. The same table
plus every benchmark's own report goes to bench/results/latest.md (git-ignored). A full run also rewrites, in
docs/benchmarks.md, the section of every benchmark that produced figures (the others keep theirs): each figure
with the command that made it and its baseline from the same run, and nothing about the run's date, host or commit.

    python -m bench.run_all [--quick] [--only NAME[,NAME...]]

NAME: proxy_throughput, event_writer, quota_pressure, analytics, explore, dashboard_render, reliability, cluster
(these are run when their modules exist), forecast, memory, alerts. --quick shortens every run (a check that the
benchmarks work, not figures to publish).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS, markdown_table

DOC = REPO / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Bench:
    name: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout_s: float
    optional: bool = False  # written by other engineers: skipped when the module does not exist

    @property
    def command(self) -> str:
        return " ".join(("python -m", f"bench.{self.name}", *self.args))


BENCHES = (
    Bench("proxy_throughput", (), ("--duration", "3", "--warmup", "1"), 900),
    Bench("event_writer", (), ("--events", "100000", "--baseline-rows", "500"), 900),
    Bench("quota_pressure", ("--minutes", "2"), ("--minutes", "1"), 1200),
    Bench("analytics", (), ("--rows", "1000000", "--runs", "3"), 3600, optional=True),
    Bench("explore", (), ("--rows", "200000", "--runs", "3"), 3600, optional=True),
    Bench("dashboard_render", (), ("--rows", "100000", "--keys", "100", "--repeat", "1"), 3600, optional=True),
    Bench("reliability", ("--duration", "300"), ("--duration", "20"), 1800, optional=True),  # warm-up ends ~2 min
    Bench("forecast", (), ("--models", "3", "--days", "24", "--duration", "2"), 1800),
    Bench("memory", ("--load", "32", "--soak", "300"), ("--load", "3", "--soak", "10"), 1500),
    Bench("alerts", (), ("--rows", "200000", "--runs", "3", "--duration", "3", "--warmup", "1"), 1800),
    Bench(
        "cluster",
        (),
        ("--duration", "2", "--minutes", "0.5", "--load", "160", "--events", "5000", "--rows", "50000", "--runs", "2"),
        3600,
        optional=True,
    ),
)


@dataclass
class Outcome:
    bench: Bench
    status: str  # "ok", "failed (exit N)", "timed out", "absent"
    seconds: float
    output: str
    figures: dict[str, Any] | None


def run_bench(b: Bench, quick: bool) -> Outcome:
    if not (REPO / "bench" / f"{b.name}.py").exists():
        return Outcome(b, "absent", 0.0, "", None)
    result_file = RESULTS / f"{b.name}.json"
    args = [sys.executable, "-m", f"bench.{b.name}", *(b.quick_args if quick else b.args)]
    started_wall, started = time.time(), time.perf_counter()
    print(f"[bench] {' '.join(args[2:])} ...", file=sys.stderr, flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    try:
        proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=b.timeout_s, check=False)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        output = proc.stdout + (f"\n[stderr]\n{proc.stderr[-3000:]}" if proc.returncode else "")
    except subprocess.TimeoutExpired as exc:
        status, output = "timed out", str(exc.stdout or "")
    seconds = time.perf_counter() - started
    figures = None
    if result_file.exists() and result_file.stat().st_mtime >= started_wall:  # never a stale file of an older run
        try:
            figures = json.loads(result_file.read_text())
        except ValueError:
            figures = None
    print(f"[bench] {b.name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return Outcome(b, status, seconds, output, figures)


# ------------------------------------------------------------------------------------------------ summary rows

Row = list[Any]


def _met(ok: bool | None) -> str:
    return "–" if ok is None else ("yes" if ok else "NO")


def rows_proxy(f: dict[str, Any]) -> list[Row]:
    by = {(r["target"], r["concurrency"]): r for r in f["rows"]}
    d1, d32, p1, p32 = by[("direct", 1)], by[("direct", 32)], by[("proxy", 1)], by[("proxy", 32)]
    out: list[Row] = [
        [
            "proxy",
            "req/s through Keyrack, c=32",
            f"{p32['rps']:,.0f}",
            f"fake direct {d32['rps']:,.0f}",
            f"{p32['rps'] / d32['rps']:.2f}" if d32["rps"] else "–",
            "≥ 700",
            _met(p32["rps"] >= 700),
        ],
        [
            "proxy",
            "req/s through Keyrack, c=1",
            f"{p1['rps']:,.0f}",
            f"fake direct {d1['rps']:,.0f}",
            f"{p1['rps'] / d1['rps']:.2f}" if d1["rps"] else "–",
            "",
            "–",
        ],
        [
            "proxy",
            "added p50 latency, c=1",
            f"{f['added_p50_ms_c1']:.2f} ms",
            f"fake direct p50 {d1['p50_ms']:.2f} ms",
            "",
            "≤ 3 ms",
            _met(f["added_p50_ms_c1"] <= 3.0),
        ],
        [
            "proxy",
            "p99 latency through Keyrack, c=32",
            f"{p32['p99_ms']:.1f} ms",
            f"fake direct {d32['p99_ms']:.1f} ms",
            "",
            "",
            "–",
        ],
        [
            "proxy",
            "events lost (requests rows vs answers)",
            str(f["events"]["lost"]),
            f"{f['events']['responses_received']:,} answers",
            "",
            "0",
            _met(f["events"]["lost"] == 0),
        ],
    ]
    if "minimal_rps_c32" in f:
        out.append(
            [
                "proxy",
                "minimal Starlette proxy, same stack, c=32 (calibration)",
                f"{f['minimal_rps_c32']:,.0f}",
                f"Keyrack {p32['rps']:,.0f}",
                f"{f['keyrack_vs_minimal_c32']:.2f}",
                "",
                "–",
            ]
        )
    if "plain_httpx_rps_c32" in f:
        out.append(
            [
                "proxy",
                "Keyrack on plain httpx transport, c=32",
                f"{f['plain_httpx_rps_c32']:,.0f}",
                f"aiohttp transport {p32['rps']:,.0f}",
                f"{f['aiohttp_vs_plain_c32']:.2f}x faster",
                "",
                "–",
            ]
        )
    return out


def rows_writer(f: dict[str, Any]) -> list[Row]:
    w, b = f["writer"], f["single_insert"]
    out: list[Row] = [
        [
            "event writer",
            "events/s to on-disk DuckDB",
            f"{w['events_per_s']:,.0f}",
            f"single-row INSERT {b['rows_per_s']:,.0f}/s",
            f"{f['ratio']:,.0f}x",
            "≥ 50,000",
            _met(w["events_per_s"] >= 50_000),
        ],
        ["event writer", "events lost", str(w["lost"]), f"{w['events']:,} enqueued", "", "0", _met(w["lost"] == 0)],
        [
            "event writer",
            "producer cost per event (build + enqueue)",
            f"{f['enqueue_us']:.2f} µs",
            f"record() alone {w['record_us']:.2f} µs",
            "",
            "",
            "–",
        ],
    ]
    arrow = w.get("arrow")
    if arrow and arrow.get("events_per_s"):  # the price of keeping pyarrow out of the proxy, both draining
        out.append(
            [
                "event writer",
                "events/s, JSON column texts (no pyarrow) vs the Arrow append",
                f"{w['events_per_s']:,.0f}",
                f"Arrow append {arrow['events_per_s']:,.0f}",
                f"{w['events_per_s'] / arrow['events_per_s']:.2f}",
                "",
                "–",
            ]
        )
    return out


def rows_quota(f: dict[str, Any]) -> list[Row]:
    """One row per strategy and load: capacity served / upstream attempts per success / upstream 429s caused."""
    out: list[Row] = []
    cap = f["capacity_per_minute"]
    rr = {r["load_rpm"]: r for r in f["rows"] if r["strategy"] == "round_robin"}
    for r in f["rows"]:
        qa = r["strategy"].startswith("quota_aware")
        over = r["load_rpm"] > cap
        base = rr.get(r["load_rpm"])
        value = (
            f"{r['served_share']:.1%} / {r['attempts_per_success']:.3f} / {r['upstream_429']} "
            f"(429s to client: {r['client_429_keyrack']} Keyrack, {r['client_429_upstream']} upstream)"
        )
        baseline = ratio = ""
        if base is not None and base is not r:
            baseline = (
                f"round_robin {base['served_share']:.1%} / {base['attempts_per_success']:.3f} / {base['upstream_429']}"
            )
            if base["upstream_429"] and r["upstream_429"] == 0:
                ratio = f"upstream 429s {base['upstream_429']} → 0"
            elif base["upstream_429"]:
                ratio = f"{base['upstream_429'] / r['upstream_429']:.0f}x fewer upstream 429s"
        target, met = "", "–"
        if qa:
            checks = [r["attempts_per_success"] <= 1.05]
            parts = ["≤ 1.05 attempts"]
            if over:
                checks.append(r["served_share"] >= 0.99)
                parts.insert(0, "≥ 99 % served")
            if base is not None and base["upstream_429"]:
                checks.append(base["upstream_429"] >= 10 * r["upstream_429"])
                parts.append("≥ 10x fewer 429s")
            target, met = ", ".join(parts), _met(all(checks))
        out.append(
            [
                f"quota pressure ({cap}/min capacity, {f['minutes']:g} min)",
                f"{r['strategy']} @ {r['load_rpm']}/min: served / attempts per success / upstream 429s",
                value,
                baseline,
                ratio,
                target,
                met,
            ]
        )
    return out


def rows_analytics(f: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    raw = next((x for x in f.get("figures", []) if "raw rows" in x["query"]), None)
    for x in f.get("figures", []):
        base = f"raw rows {raw['p50_ms']:,.0f} ms" if raw and x is not raw and "series day (" in x["query"] else ""
        ratio = f"{raw['p50_ms'] / x['p50_ms']:.1f}x" if base and x["p50_ms"] else ""
        out.append(
            [
                f"analytics ({f.get('rows', 0):,} rows)",
                f"{x['query']} p50",
                f"{x['p50_ms']:,.0f} ms",
                base,
                ratio,
                "≤ 500 ms" if x.get("target") else "",
                _met(x["p50_ms"] <= 500) if x.get("target") else "–",
            ]
        )
    return out


def rows_explore(f: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for traffic, got in f.get("traffic", {}).items():  # realistic: the target; independent: the adversarial case
        area = f"explore ({f.get('rows', 0):,} rows, 90 days, {traffic} traffic)"
        for x in got.get("figures", []):
            raw = x.get("raw_p50_ms")
            base, ratio = (f"raw rows {raw:,.0f} ms", f"{raw / x['p50_ms']:.1f}x") if raw and x["p50_ms"] else ("", "")
            out.append(
                [
                    area,
                    f"{x['query']} p50",
                    f"{x['p50_ms']:,.0f} ms",
                    base,
                    ratio,
                    "≤ 1 s" if traffic == "realistic" else "reported",
                    _met(x["p50_ms"] <= 1000),
                ]
            )
    return out


def rows_dashboard(f: dict[str, Any]) -> list[Row]:
    return [
        [
            f"dashboard ({f.get('keys', 0):,} keys, {f.get('rows', 0):,} rows)",
            f"{p['page']} first render",
            f"{p['first_s']:.2f} s",
            f"warm rerun {p['warm_s']:.2f} s",
            "",
            "≤ 2 s",
            _met(bool(p.get("ok"))),
        ]
        for p in f.get("pages", [])
    ] + (
        [
            [
                f"dashboard ({f.get('keys', 0):,} keys, {f.get('rows', 0):,} rows)",
                "trends first visit in Chromium (click to last chart)",
                f"{b['median_s']:.2f} s",
                f"max {b['max_s']:.2f} s",
                "",
                "≤ 3 s",
                _met(b["median_s"] <= 3.0),
            ]
        ]
        if (b := f.get("browser_trends"))
        else []
    )


def rows_reliability(f: dict[str, Any]) -> list[Row]:
    area = f"reliability soak ({f['duration_s']:g} s, {f['workers']} clients, faults injected)"
    out: list[Row] = [
        [area, "requests/s under faults", f"{f['requests_per_s']:,.1f}", f"{f['requests']:,} requests", "", "", "–"],
        [area, "RSS growth", f"{f['rss_growth_mb']:.1f} MB", "", "", "", "–"],
    ]
    out += [[area, name, "ok" if ok else "FAILED", "", "", "holds", _met(bool(ok))] for name, ok in f["checks"].items()]
    return out


def rows_forecast(f: dict[str, Any]) -> list[Row]:
    fit, tp = f["fit"], f["throughput"]
    area = f"forecast ({f['models']} models × {f['days']} d)"
    speedup = f"{fit['statsmodels_per_fit_ms'] / fit['per_fit_ms']:.1f}x" if fit["per_fit_ms"] else ""
    return [
        [
            area,
            "full demand refresh, all models (3 fits each)",
            f"{fit['refresh_s']:.1f} s",
            f"statsmodels MSTL+ETS {fit['statsmodels_per_fit_ms']:.0f} ms/fit vs {fit['per_fit_ms']:.0f}",
            speedup,
            "≤ 10 s",
            _met(fit["refresh_s"] <= 10),
        ],
        [
            area,
            "routine demand refresh (forecast fit only; backtest every 6 h)",
            f"{fit['routine_refresh_s']:.1f} s",
            f"full {fit['refresh_s']:.1f} s",
            "",
            "≤ 10 s",
            _met(fit["routine_refresh_s"] <= 10),
        ],
        [
            area,
            "full refresh inside the proxy (worker process)",
            f"{tp['first_refresh_s'] or 0:.1f} s",
            "",
            "",
            "≤ 10 s",
            _met((tp["first_refresh_s"] or 1e9) <= 10),
        ],
        [
            area,
            "proxy req/s c=32 during a full refresh",
            f"{tp['during_refresh_rps']:,.0f}",
            f"idle {tp['idle_rps']:,.0f}",
            f"{tp['ratio']:.2f}",
            "≥ 0.9",
            _met(tp["ratio"] >= 0.9),
        ],
    ]


def rows_memory(f: dict[str, Any]) -> list[Row]:
    p, lone, base = f["proxy"], f.get("alone"), f.get("baseline")
    area = "memory (RSS)"
    who = "proxy, dashboard attached and polling" if f.get("dashboard_attached") else "proxy"
    steady = p["steady"]["VmRSS"]
    out: list[Row] = [
        [
            area,
            f"{who}: {'its first pages read' if f.get('dashboard_attached') else 'at start'}",
            f"{p['start']['VmRSS']:.0f} MB",
            f"anon {p['start'].get('RssAnon', 0):.0f}",
            "",
            "",
            "–",
        ],
        [area, f"{who}: after c=32 ({f['load_s']:g} s)", f"{p['after_load']['VmRSS']:.0f} MB", "", "", "", "–"],
    ]
    if lone:
        out.append(
            [
                area,
                f"**{who}: steady through the {f['soak_s']:g} s soak**",
                f"**{steady:.0f} MB**",
                f"no dashboard {lone['steady']['VmRSS']:.0f} MB",
                f"{steady / lone['steady']['VmRSS']:.2f}",
                "≤ 150 MB",
                _met(steady <= 150),
            ]
        )
    else:
        out.append(
            [
                area,
                f"{who}: steady (soak {f['soak_s']:g} s)",
                f"{steady:.0f} MB",
                f"start {p['start']['VmRSS']:.0f} MB",
                f"{steady / p['start']['VmRSS']:.2f}" if p["start"]["VmRSS"] else "–",
                "≤ 150 MB",
                _met(steady <= 150),
            ]
        )
    if base:
        out.append(
            [
                area,
                "proxy steady vs DuckDB's defaults (256 KB blocks, 5 s allocator decay), no dashboard",
                f"{(lone or p)['steady']['VmRSS']:.0f} MB",
                f"{base['steady']['VmRSS']:.0f} MB",
                f"{(lone or p)['steady']['VmRSS'] / base['steady']['VmRSS']:.2f}",
                "–",
                "–",
            ]
        )
    polling = p.get("polling")
    if polling:
        dash = polling.get("dashboard_rss", {}).get("VmRSS")
        out.append(
            [
                area,
                f"dashboard polling: Monitor / Trends page loads (a page every {polling['dwell_s']:g} s)",
                f"{polling['loads']['monitor']} / {polling['loads']['trends']}",
                f"{len(polling['failures'])} failed",
                "",
                "",
                "–",
            ]
        )
        if dash:
            out.append([area, "the dashboard's Streamlit server at the soak's end", f"{dash:.0f} MB", "", "", "", "–"])
    if f.get("load_average"):  # the machine's own load moves the soak's request rate, and with it the figures
        before, after = f["load_average"]
        out.append([area, "machine load (1 min), before / after", f"{before:g} / {after:g}", "", "", "", "–"])
    return out


def rows_alerts(f: dict[str, Any]) -> list[Row]:
    e, t = f["evaluation"], f["throughput"]
    area = f"alerts ({e['rules']} rules, {e['rows']:,} rows)"
    return [
        [
            area,
            "ms per evaluation (median)",
            f"{e['eval_ms_median']:,.1f} ms",
            f"p95 {e['eval_ms_p95']:,.1f} ms",
            "",
            "",
            "–",
        ],
        [
            area,
            "proxy req/s c=32, rules every 1 s",
            f"{t['rps_50_rules']:,.0f}",
            f"no rules {t['rps_no_rules']:,.0f}",
            f"{t['ratio']:.2f}x",
            "≥ 0.95x",
            _met(t["ratio"] >= 0.95),
        ],
    ]


def rows_cluster(f: dict[str, Any]) -> list[Row]:
    from bench.cluster import report_rows

    return [["cluster", *row[:2], row[2], "", *row[3:]] for row in report_rows(f)]


SUMMARISERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "proxy_throughput": rows_proxy,
    "event_writer": rows_writer,
    "quota_pressure": rows_quota,
    "analytics": rows_analytics,
    "explore": rows_explore,
    "dashboard_render": rows_dashboard,
    "reliability": rows_reliability,
    "forecast": rows_forecast,
    "memory": rows_memory,
    "alerts": rows_alerts,
    "cluster": rows_cluster,
}


def summary_table(outcomes: list[Outcome]) -> str:
    rows: list[Row] = []
    for o in outcomes:
        if o.figures is None:
            if o.status != "absent":
                rows.append([o.bench.name, "(no figures)", o.status, "", "", "", "NO"])
            continue
        try:
            rows += SUMMARISERS[o.bench.name](o.figures)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a peer's JSON changed shape
            rows.append([o.bench.name, f"(unreadable figures: {type(exc).__name__}: {exc})", o.status, "", "", "", "–"])
    return markdown_table(["area", "metric", "value", "baseline", "ratio", "target", "met"], rows)


# ------------------------------------------------------------------------------------------------ docs/benchmarks.md

INTRO = """# Benchmarks

<!-- Written by `make bench` (bench/run_all.py, INTRO and benchmarks_doc): a section is replaced when its benchmark
runs; edit the text above the sections there. -->

What Keyrack's benchmarks measure, and what they measured. Every figure comes with the command that made it and,
where there is one, a baseline measured in the same run on the same host: absolute figures move with the host and
its load (by a third on a busy 2-core host), the ratios carry over.

## How to run

```bash
make bench                                    # every benchmark, one table; rewrites this page
python -m bench.run_all --only memory,alerts  # some of them: rewrites their sections only
python -m bench.<name> --help                 # one benchmark on its own (prints its report, leaves this page)
```

`make bench` starts the services the cluster benchmark needs (PostgreSQL, Redis). `--quick` only checks that the
benchmarks work (short runs) and leaves this page alone. The last run's full report, with every benchmark's own
tables, is `bench/results/latest.md` (not committed).

## What each benchmark measures

| benchmark | measures | baseline in the same run |
|---|---|---|
| `proxy_throughput` | req/s and latency through `keyrack serve` at c=1 and c=32 in front of a zero-latency fake Gemini; events lost after SIGTERM; uvicorn vs granian | the fake called directly; a minimal Starlette proxy on the same stack; Keyrack on plain httpx |
| `event_writer` | events/s the writer appends to an on-disk DuckDB file; the request path's cost per event | single-row INSERTs; the Arrow append |
| `quota_pressure` | how each strategy serves demand below and above a pool's capacity: share served, upstream attempts per success, 429s | `round_robin` |
| `analytics` | the admin API's stats queries on 10 million rows while the writer appends | the same series from raw rows |
| `explore` | Explore's answers (measures × two dimensions over 90 days) on 10 million rows while the writer appends | the same answers from raw rows only |
| `dashboard_render` | the first render of each dashboard page with 1,000 keys and 1 million rows | a warm rerun |
| `reliability` | a soak against a fake injecting faults: every answer well formed, every call recorded once, no secret leaked, memory flat | – |
| `forecast` | a demand-forecast refresh of 20 models × 90 days; proxy req/s while one runs | statsmodels' MSTL + ETS per fit; the idle proxy |
| `memory` | the proxy's RSS at start, after a c=32 load and through a 300 s soak with the dashboard attached (a real dashboard and headless Chromium loading Monitor and Trends); the dashboard's RSS | the same proxy with no dashboard |
| `alerts` | one evaluation of 50 rules; proxy req/s with the rules evaluated every second | the proxy with no rule |
| `cluster` | a 1-replica cluster's added latency, 2 replicas' throughput, quota across replicas, lake ingest, a SIGKILL's loss, stats on the lake | the embedded proxy and file |
"""

TITLES = {
    "proxy_throughput": "Proxy",
    "event_writer": "Event writer",
    "quota_pressure": "Quota pressure",
    "analytics": "Analytics",
    "explore": "Explore",
    "dashboard_render": "Dashboard",
    "reliability": "Reliability soak",
    "forecast": "Forecast",
    "memory": "Memory",
    "alerts": "Alerts",
    "cluster": "Cluster",
}
SECTION = re.compile(r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->\n", re.S)
# Hand-written notes after a section (how to read it, no figures) survive every rewrite.
NOTES = re.compile(r"<!-- notes:(\w+) -->\n.*?<!-- /notes:\1 -->\n", re.S)


def doc_section(b: Bench, figures: dict[str, Any], cpus: int | None) -> str:
    """One benchmark's section: its command, then its figures beside their same-run baselines."""
    rows = SUMMARISERS[b.name](figures)
    areas = {str(r[0]) for r in rows}
    head = ["metric", "value", "baseline (same run)", "ratio", "target", "met"]
    if len(areas) > 1:
        table = markdown_table(["area", *head], rows)
        area_line = ""
    else:
        table = markdown_table(head, [r[1:] for r in rows])
        area = areas.pop() if areas else ""
        area_line = f" — {area}" if area and area.lower() != TITLES.get(b.name, "").lower() else ""
    where = f" on {cpus} cores" if cpus else ""
    return (
        f"<!-- bench:{b.name} -->\n## {TITLES.get(b.name, b.name)}\n\n"
        f"`{b.command}`{where}{area_line}\n\n{table}\n<!-- /bench:{b.name} -->\n"
    )


def benchmarks_doc(results: dict[str, dict[str, Any]], cpus: int | None, previous: str = "") -> str:
    """docs/benchmarks.md: INTRO, then a section per benchmark, in BENCHES order. A benchmark in `results` (its
    JSON figures from this run) gets a new section; the others keep the one in `previous` (the page as it was)."""
    kept = {m.group(1): m.group(0) for m in SECTION.finditer(previous)}
    notes = {m.group(1): m.group(0) for m in NOTES.finditer(previous)}
    sections = []
    for b in BENCHES:
        section = kept.get(b.name)
        if b.name in results:
            # A peer's JSON that changed shape keeps the old section.
            with contextlib.suppress(KeyError, TypeError, ValueError, ZeroDivisionError):
                section = doc_section(b, results[b.name], cpus)
        if section or b.name in notes:
            sections.append((section or "") + notes.get(b.name, ""))
    return INTRO + "".join(f"\n{s}" for s in sections)


def write_benchmarks_doc(outcomes: list[Outcome], path: Path = DOC) -> None:
    results = {o.bench.name: o.figures for o in outcomes if o.status == "ok" and o.figures is not None}
    previous = path.read_text() if path.exists() else ""
    path.write_text(benchmarks_doc(results, os.cpu_count(), previous))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (checks the benches work; not for publishing)")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    args = ap.parse_args(argv)
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = names - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(b.name for b in BENCHES)}")
    selected = [b for b in BENCHES if not names or b.name in names]
    RESULTS.mkdir(parents=True, exist_ok=True)

    started = datetime.now(UTC)
    outcomes = [run_bench(b, args.quick) for b in selected]
    table = summary_table(outcomes)
    ran = ", ".join(f"{o.bench.name} ({o.status}, {o.seconds:.0f} s)" for o in outcomes)
    header = (
        f"Keyrack benchmarks — {started:%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {'QUICK run' if args.quick else 'full run'}\n\n{ran}"
    )
    print(f"\n{header}\n\n{table}")

    details = "\n\n".join(
        f"## {o.bench.name} ({o.status}, {o.seconds:.0f} s)\n\n{o.output.strip() or '(no output)'}"
        for o in outcomes
        if o.status != "absent"
    )
    latest = RESULTS / "latest.md"
    latest.write_text(f"# {header}\n\n{table}\n\n{details}\n")
    print(f"\nwritten to {latest.relative_to(REPO)}")
    if not args.quick:  # short runs check the machinery: their figures are not for publishing
        write_benchmarks_doc(outcomes)
        print(f"sections of the benchmarks that ran rewritten in {DOC.relative_to(REPO)}")
    return 0 if all(o.status in ("ok", "absent") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
