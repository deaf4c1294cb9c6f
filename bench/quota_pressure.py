"""Quota pressure: what each key-selection strategy does when demand nears and exceeds the free tier.

Setup (per strategy and load level, each on its own fake upstream + proxy pair, all pairs at once so every one
starts from empty quota windows and the whole bench takes `--minutes` plus start-up):

- 12 pool keys in 6 projects; projects p1..p5 have 2 valid keys each, p6's 2 keys are invalid at the fake;
- the fake allows `--rpm` (10) generateContent calls per project per minute for gemini-2.5-flash (sliding 60 s),
  so the theoretical capacity is 5 valid projects × 10 = 50 requests/minute;
- open-loop load: one request every 60/L seconds whatever the answers (L = 40 and 80 per minute by default),
  raw HTTP, each request independent, for `--minutes`.

Strategies: round_robin, least_used, quota_aware with the proxy's built-in free-tier table (gemini-2.5-flash
rpm 10), and quota_aware with that model's limits unset (KEYRACK_MODEL_LIMITS), which must learn rpm from the
first 429's quotaValue.

Three more rows check that the built-in table is only a guess (quota_aware, default settings, each on its own fake):
- "no limit at all (burst)": the fake has no limits; a closed-loop burst of 300 calls at c=32 at the start. Every
  call must be served (the table says 50/min; it must not refuse, delay or cap);
- "limit below the table": the fake allows 4 rpm per project (the table says 10); open-loop load at 2× capacity.
  At most one upstream 429 per project, then Keyrack refuses on its own;
- "limit above the table": the fake allows 25 rpm per project (a paid tier); open-loop load at 1.3× capacity.
  Served at the real capacity without refusals of Keyrack's own while capacity remains.

Reported per row: client-visible success rate; share of capacity served = successes / the most any scheduler
could have served for the same send times (= min(demand, capacity × minutes) for whole minutes); upstream
attempts per success (the fake's generateContent count, invalid-key attempts included); 429s that reached the
client, split into Keyrack's own (immediate, with Retry-After, no upstream call) and upstream 429s passed
through; upstream 429s caused (the fake's count) and when they happened (the proxy's attempts table).

    python -m bench.quota_pressure [--minutes 2] [--loads 40,80] [--rpm 10] [--no-table-cases | --table-cases-only]

Targets: quota_aware serves >= 99 % of capacity when demand exceeds it, makes <= 1.05 upstream attempts per
success, and causes >= 10x fewer upstream 429s than round_robin.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    CLIENT_TOKEN,
    GENERATE_BODY,
    MODEL,
    NO_LIMITS,
    RESULTS,
    Server,
    count_rows,
    generate_path,
    http_json,
    load_average,
    markdown_table,
    run_async,
    start_fake,
    start_proxy,
    stop_all,
    wait_ready,
    write_json,
)
from proxy_service.demo.scenario import demo_key

VALID_PROJECTS = 5
KEYS_PER_PROJECT = 2
TARGET_SERVED = 0.99
TARGET_ATTEMPTS_PER_SUCCESS = 1.05
TARGET_429_RATIO = 10.0


@dataclass(frozen=True)
class Variant:
    name: str
    strategy: str
    model_limits: str | None = (
        None  # KEYRACK_MODEL_LIMITS; None = the proxy's built-in table; CONFIGURED = the fake's rpm
    )


CONFIGURED = "configured"  # the operator told Keyrack the real limit (KEYRACK_MODEL_LIMITS with the fake's rpm)


VARIANTS = (
    Variant("round_robin", "round_robin"),
    Variant("least_used", "least_used"),
    Variant("quota_aware", "quota_aware", CONFIGURED),
    Variant("quota_aware (built-in guess)", "quota_aware"),
    Variant("quota_aware (learns rpm)", "quota_aware", NO_LIMITS),
)


def pool() -> tuple[dict[str, list[str]], list[str], str]:
    """(fake projects, invalid keys, KEYRACK_API_KEYS): 5 projects × 2 valid keys + 1 project with 2 invalid keys."""
    projects = {
        f"p{p}": [demo_key(f"qp-p{p}-key-{k}") for k in "ab"[:KEYS_PER_PROJECT]] for p in range(1, VALID_PROJECTS + 2)
    }
    invalid = projects[f"p{VALID_PROJECTS + 1}"]
    api_keys = ",".join(f"{p}:{k}" for p, keys in projects.items() for k in keys)
    return projects, invalid, api_keys


@dataclass
class Outcome:
    sent_at: float
    status: int | None  # None: no answer (connection error / timeout)
    latency_s: float
    keyrack_429: bool = False  # Keyrack's own 429 (no x-keyrack-attempts: no upstream answer passed through)
    retry_after: str | None = None
    attempts: int | None = None


@dataclass(frozen=True)
class TableCase:
    """A row that checks the built-in table is only a guess: the fake's real limit differs from it."""

    name: str
    rpm_limit: int | None  # the fake's rpm per project; None = no limit at all
    load_per_capacity: float = 0.0  # open-loop load as a multiple of the capacity
    burst: tuple[int, int] | None = None  # (calls, concurrency) of a closed-loop burst instead


TABLE_RPM = 10  # what the proxy's built-in table says for MODEL
TABLE_CASES = (
    TableCase("no limit at all (burst)", None, burst=(300, 32)),
    TableCase("limit below the table", 4, load_per_capacity=2.0),
    TableCase("limit above the table", 25, load_per_capacity=1.3),
)


@dataclass
class Pair:
    variant: Variant
    rpm_load: int
    fake: Server
    proxy: Server
    rpm_limit: int | None = 10  # the fake's rpm per project (None: unlimited)
    burst: tuple[int, int] | None = None
    label: str | None = None  # a table case's name
    outcomes: list[Outcome] = field(default_factory=list)
    fake_stats: dict[str, Any] = field(default_factory=dict)
    db: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


async def _one(session: aiohttp.ClientSession, url: str, out: list[Outcome], t_start: float) -> None:
    t0 = time.monotonic()
    try:
        async with session.post(
            url, data=GENERATE_BODY, headers={"content-type": "application/json", "x-goog-api-key": CLIENT_TOKEN}
        ) as resp:
            await resp.read()
            h = resp.headers
            attempts = h.get("x-keyrack-attempts")
            out.append(
                Outcome(
                    t0 - t_start,
                    resp.status,
                    time.monotonic() - t0,
                    keyrack_429=resp.status == 429 and attempts is None,
                    retry_after=h.get("retry-after"),
                    attempts=int(attempts) if attempts and attempts.isdigit() else None,
                )
            )
    except (aiohttp.ClientError, TimeoutError):
        out.append(Outcome(t0 - t_start, None, time.monotonic() - t0))


async def _open_loop(pairs: list[Pair], minutes: float, timeout: float) -> float:
    """Every pair's sender on one loop: request i of a pair leaves at start + i × 60/L, answered or not."""
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()
        t_start = time.monotonic()

        async def burst(p: Pair) -> None:
            assert p.burst is not None
            n, concurrency = p.burst
            sem = asyncio.Semaphore(concurrency)
            url = p.proxy.url + generate_path(MODEL)

            async def one() -> None:
                async with sem:
                    await _one(session, url, p.outcomes, t_start)

            await asyncio.gather(*(one() for _ in range(n)))

        async def sender(p: Pair) -> None:
            if p.burst is not None:
                return await burst(p)
            interval = 60.0 / p.rpm_load
            n = round(p.rpm_load * minutes)
            url = p.proxy.url + generate_path(MODEL)
            tasks = []
            for i in range(n):
                delay = start + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(_one(session, url, p.outcomes, t_start)))
            await asyncio.gather(*tasks)

        wall_start = time.time()
        await asyncio.gather(*(sender(p) for p in pairs))
        return wall_start


def ideal_successes(send_times: list[float], per_minute: int) -> int:
    """The most requests any scheduler could have served: admit greedily whenever fewer than `per_minute` were
    admitted in the last 60 s (greedy is optimal for one sliding-window limit; per-project windows add nothing,
    since the sum being under the limit means some project is). Equals capacity × minutes for integer minutes
    under sustained overload."""
    admitted: list[float] = []
    for t in sorted(send_times):
        if len(admitted) < per_minute or admitted[-per_minute] + 60.0 <= t:
            admitted.append(t)
    return len(admitted)


def _summarise(p: Pair) -> dict[str, Any]:
    statuses = Counter(o.status for o in p.outcomes)
    demand = len(p.outcomes)
    ok = statuses.get(200, 0)
    c429 = statuses.get(429, 0)
    keyrack_429 = sum(1 for o in p.outcomes if o.keyrack_429)
    no_retry_after = sum(1 for o in p.outcomes if o.status == 429 and not o.retry_after)
    sent = [o.sent_at for o in p.outcomes]
    capacity = len(sent) if p.rpm_limit is None else ideal_successes(sent, VALID_PROJECTS * p.rpm_limit)
    ops = p.fake_stats.get("by_operation", {})
    upstream_attempts = ops.get("generateContent", 0)
    upstream_429 = p.fake_stats.get("by_status", {}).get("429", 0)
    return {
        "strategy": p.variant.name if p.label is None else f"quota_aware, {p.label}",
        "fake_rpm": p.rpm_limit,
        "load_rpm": p.rpm_load if p.burst is None else f"burst {p.burst[0]} @ c={p.burst[1]}",
        "demand": demand,
        "ok": ok,
        "success_rate": ok / demand if demand else 0.0,
        "capacity": capacity,
        "served_share": ok / capacity if capacity else 0.0,
        "upstream_attempts": upstream_attempts,
        "attempts_per_success": upstream_attempts / ok if ok else float("inf"),
        "client_429": c429,
        "client_429_keyrack": keyrack_429,
        "client_429_upstream": c429 - keyrack_429,
        "client_429_without_retry_after": no_retry_after,
        "other_errors": demand - ok - c429,
        "upstream_429": upstream_429,
        "upstream_400_invalid_key": p.fake_stats.get("by_status", {}).get("400", 0),
        # Keyrack's own 429s sent while the real capacity was not yet used up (a guess refusing would show here).
        "keyrack_429_before_capacity": _refused_before_capacity(p, capacity),
        "db": p.db,
        "p50_latency_ms": round(sorted(o.latency_s for o in p.outcomes)[demand // 2] * 1000, 2) if demand else 0.0,
    }


def _refused_before_capacity(p: Pair, capacity: int) -> int:
    """Keyrack's own 429s sent before `capacity` successes had been answered (in send order)."""
    served = refused = 0
    for o in sorted(p.outcomes, key=lambda o: o.sent_at):
        if served >= capacity:
            break
        served += o.status == 200
        refused += o.keyrack_429
    return refused


def run(
    minutes: float = 2.0,
    loads: tuple[int, ...] = (40, 80),
    rpm_limit: int = 10,
    variants: tuple[Variant, ...] = VARIANTS,
    workdir: Path | None = None,
    table_cases: tuple[TableCase, ...] = TABLE_CASES,
) -> dict[str, Any]:
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="keyrack-bench-quota-")
        workdir = Path(own_tmp.name)
    load_before = load_average()
    projects, invalid, api_keys = pool()
    scenario = {"projects": projects, "invalid_keys": invalid, "limits": {MODEL: {"rpm": rpm_limit}}, "seed": 7}
    pairs: list[Pair] = []
    fakes: list[Server] = []
    try:
        _run_pairs(pairs, fakes, variants, loads, minutes, scenario, api_keys, workdir, table_cases)
    finally:
        stop_all(fakes)
        if own_tmp is not None:
            own_tmp.cleanup()
    rows = [_summarise(p) for p in pairs]
    return {
        "minutes": minutes,
        "load_average": [load_before, load_average()],
        "rpm_limit": rpm_limit,
        "capacity_per_minute": VALID_PROJECTS * rpm_limit,
        "keys": f"{(VALID_PROJECTS + 1) * KEYS_PER_PROJECT} keys in {VALID_PROJECTS + 1} projects "
        f"({KEYS_PER_PROJECT} invalid)",
        "elapsed_s": round(max((p.elapsed_s for p in pairs), default=0.0), 1),
        "rows": rows,
        "targets": _targets(rows, loads, rpm_limit),
    }


def _run_pairs(
    pairs: list[Pair],
    fakes: list[Server],
    variants: tuple[Variant, ...],
    loads: tuple[int, ...],
    minutes: float,
    scenario: dict[str, Any],
    api_keys: str,
    workdir: Path,
    table_cases: tuple[TableCase, ...] = (),
) -> None:
    """Start every pair, drive the load, collect the fakes' stats, stop the proxies and read their files."""
    try:
        for i, v in enumerate(variants):
            for load in loads:
                tag = f"{i}-{v.strategy}-{load}"
                fake = start_fake(workdir, scenario, name=f"fake-{tag}")
                fakes.append(fake)
                proxy = start_proxy(
                    workdir,
                    fake.url,
                    api_keys,
                    strategy=v.strategy,
                    model_limits=json.dumps(scenario["limits"]) if v.model_limits == CONFIGURED else v.model_limits,
                    name=f"proxy-{tag}",
                    env={"KEYRACK_RECHECK_INTERVAL_S": "3600"},
                )
                pairs.append(Pair(v, load, fake, proxy, scenario["limits"][MODEL]["rpm"]))
        for j, case in enumerate(table_cases):
            tag = f"table-{j}"
            limits = {} if case.rpm_limit is None else {MODEL: {"rpm": case.rpm_limit}}
            fake = start_fake(workdir, {**scenario, "limits": limits}, name=f"fake-{tag}")
            fakes.append(fake)
            proxy = start_proxy(
                workdir, fake.url, api_keys, name=f"proxy-{tag}", env={"KEYRACK_RECHECK_INTERVAL_S": "3600"}
            )  # default settings: the built-in table
            load = 0 if case.rpm_limit is None else round(case.load_per_capacity * VALID_PROJECTS * case.rpm_limit)
            pairs.append(
                Pair(Variant(case.name, "quota_aware"), load, fake, proxy, case.rpm_limit, case.burst, case.name)
            )
        wait_ready([s for p in pairs for s in (p.fake, p.proxy)], timeout=120)
        started = time.monotonic()
        wall_start = run_async(_open_loop(pairs, minutes, timeout=60.0))
        elapsed = time.monotonic() - started
        for p in pairs:
            p.fake_stats = http_json(p.fake.url + "/_fake/stats")
            p.elapsed_s = elapsed
    finally:
        stop_all(p.proxy for p in pairs)  # SIGTERM: each proxy writes its queued events before exiting
    for p in pairs:
        assert p.proxy.data_dir is not None
        rows = count_rows(
            p.proxy.data_dir / "keyrack.duckdb",
            "SELECT 'attempt_' || coalesce(CAST(upstream_status AS VARCHAR), 'none'), count(*) FROM attempts "
            "GROUP BY ALL UNION ALL SELECT 'request_' || outcome, count(*) FROM requests GROUP BY ALL",
        )
        p.db = dict(rows)
        at = count_rows(
            p.proxy.data_dir / "keyrack.duckdb",
            "SELECT epoch(ts) FROM attempts WHERE upstream_status = 429 ORDER BY ts",
        )
        p.db["upstream_429_at_s"] = [round(t - wall_start, 2) for (t,) in at]
        by_project = count_rows(
            p.proxy.data_dir / "keyrack.duckdb",
            "SELECT project, count(*) FROM attempts WHERE upstream_status = 429 GROUP BY ALL ORDER BY 1",
        )
        p.db["upstream_429_by_project"] = dict(by_project)


def _targets(rows: list[dict[str, Any]], loads: tuple[int, ...], rpm_limit: int) -> dict[str, Any]:
    capacity = VALID_PROJECTS * rpm_limit
    out: dict[str, Any] = {}
    for load in loads:
        rr = next((r for r in rows if r["strategy"] == "round_robin" and r["load_rpm"] == load), None)
        for r in rows:
            if not r["strategy"].startswith("quota_aware") or r["load_rpm"] != load or r["fake_rpm"] != rpm_limit:
                continue
            tag = f"{r['strategy']} @ {load}/min"
            if load > capacity:
                out[f"{tag}: served share"] = {
                    "value": round(r["served_share"], 4),
                    "target": f">= {TARGET_SERVED}",
                    "met": r["served_share"] >= TARGET_SERVED,
                }
            out[f"{tag}: attempts per success"] = {
                "value": round(r["attempts_per_success"], 3),
                "target": f"<= {TARGET_ATTEMPTS_PER_SUCCESS}",
                "met": r["attempts_per_success"] <= TARGET_ATTEMPTS_PER_SUCCESS,
            }
            if rr is not None and rr["upstream_429"] > 0:
                ratio = rr["upstream_429"] / max(r["upstream_429"], 1)
                out[f"{tag}: upstream 429s vs round_robin"] = {
                    "value": f"{rr['upstream_429']} vs {r['upstream_429']}",
                    "target": f">= {TARGET_429_RATIO:g}x fewer",
                    "met": rr["upstream_429"] >= TARGET_429_RATIO * r["upstream_429"],
                    "ratio": round(ratio, 1),
                }
    for r in rows:
        if r["fake_rpm"] == rpm_limit:
            continue  # a table case
        tag = r["strategy"]
        out[f"{tag}: Keyrack 429s while capacity remained"] = {
            "value": r["keyrack_429_before_capacity"],
            "target": "0",
            "met": r["keyrack_429_before_capacity"] == 0,
        }
        if r["fake_rpm"] is not None and r["fake_rpm"] < TABLE_RPM:
            worst = max(r["db"].get("upstream_429_by_project", {}).values(), default=0)
            out[f"{tag}: upstream 429s per project"] = {"value": worst, "target": "<= 1", "met": worst <= 1}
    return out


def report(f: dict[str, Any]) -> str:
    head = [
        "strategy",
        "fake rpm/project",
        "load/min",
        "sent",
        "ok",
        "success",
        "capacity served",
        "upstream attempts/success",
        "429 to client (Keyrack / upstream)",
        "upstream 429s",
        "other errors",
    ]
    table = markdown_table(
        head,
        [
            [
                r["strategy"],
                r["fake_rpm"] if r["fake_rpm"] is not None else "none",
                r["load_rpm"],
                r["demand"],
                r["ok"],
                f"{r['success_rate']:.1%}",
                f"{r['served_share']:.1%}",
                round(r["attempts_per_success"], 3),
                f"{r['client_429_keyrack']} / {r['client_429_upstream']}",
                r["upstream_429"],
                r["other_errors"],
            ]
            for r in f["rows"]
        ],
    )
    lines = [
        f"### Quota pressure ({f['keys']}, {f['rpm_limit']} rpm per project: capacity "
        f"{f['capacity_per_minute']}/min; open-loop load for {f['minutes']:g} min)",
        "",
        table,
        "",
    ]
    missing_ra = sum(r["client_429_without_retry_after"] for r in f["rows"])
    lines.append(
        f"- every 429 to a client carried Retry-After: {'yes' if missing_ra == 0 else f'no ({missing_ra} without)'}"
    )
    for r in f["rows"]:
        at = r["db"].get("upstream_429_at_s") or []
        if r["strategy"].startswith("quota_aware") and at:
            shown = ", ".join(f"{t:g}" for t in at[:10]) + (" …" if len(at) > 10 else "")
            lines.append(f"- {r['strategy']} @ {r['load_rpm']}/min: upstream 429s at t = {shown} s after the start")
    for name, t in f["targets"].items():
        lines.append(f"- target {name} {t['target']}: {t['value']} — {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=2.0, help="load duration per pair (all pairs run at once)")
    ap.add_argument("--loads", default="40,80", help="open-loop loads in requests per minute (default 40,80)")
    ap.add_argument("--rpm", type=int, default=10, help="the fake's rpm limit per project (default 10)")
    ap.add_argument("--no-table-cases", action="store_true", help="skip the rows that check the built-in table")
    ap.add_argument("--table-cases-only", action="store_true", help="only the rows that check the built-in table")
    ap.add_argument("--json", type=Path, default=RESULTS / "quota_pressure.json", help="where to write the figures")
    args = ap.parse_args(argv)
    loads = tuple(int(x) for x in args.loads.split(",") if x.strip())
    figures = run(
        args.minutes,
        () if args.table_cases_only else loads,
        args.rpm,
        variants=() if args.table_cases_only else VARIANTS,
        table_cases=() if args.no_table_cases else TABLE_CASES,
    )
    print(report(figures))
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
