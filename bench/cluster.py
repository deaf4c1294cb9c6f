"""Cluster mode (issue 13): what replicas cost and what they buy, on loopback, this machine.

Sections (each against its own fake upstream; PostgreSQL and Redis are the local services, in a throwaway database
`keyrack_bench_<hex>` that is dropped after, and Redis db 12, flushed):

1. latency: added p50 of a 1-replica cluster over the embedded proxy, closed loop at c=1 (target ≤ 1 ms), the two
   taking turns in 0.5 s slices for `--duration` s each (so a drift of the machine's load hits both alike);
2. throughput: 2 replicas (c=16 each, at once) vs 1 replica (c=32), req/s;
3. quota pressure: 3 replicas vs 1 embedded proxy, 5 projects × rpm 10 (capacity 50/min), open-loop demand of
   `--load` per minute spread round robin over the replicas, for `--minutes`: served share of capacity (≥ 99 %),
   upstream 429s (≤ single + 2), upstream attempts per success (≤ 1.05);
4. lake ingest: 3 writer processes (the real LakeWriter, 1 s commits) appending as fast as they can: events/s
   committed, zero lost;
5. analytics on a lake: `--rows` synthetic rows (the analytics bench's generator) in the lake and in an embedded
   file; summary, series and top p50 on both, timed alternately (target ≤ 2× embedded). Default 1M rows; the
   issue's 10M (`--rows 10000000`) took 281 s (lake) and 293 s (embedded file) to build at load ~8 on 2 cores;
   `--keep DIR` builds both once in DIR (catalog database `keyrack_bench_keep_<rows>`, left in place) and later
   runs with the same --rows reuse them (and the first run's `now`). Both sides read through
   `store.stats_reader()`, as `Gateway.read_stats` (a fresh cursor per query): the lake's takes the rollup and the
   raw range edges from the replica's mirror (cluster/mirror.py); the mirror's first load is timed apart;
6. sigkill: one replica loaded for `--duration` s, SIGKILLed, restarted on its data dir: answered requests missing
   from the lake before the restart (the commit window) and after it replayed its journal (the 0.1 s window).

    python -m bench.cluster [--duration 5] [--minutes 1] [--load 80] [--events 100000] [--rows 1000000] [--only sigkill,...]
                            [--keep DIR]  (analytics: build once, reuse)
                            [--strategy quota_aware|round_robin|least_used]  (speed section)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import duckdb
import redis

from bench.common import (
    CLIENT_TOKEN,
    GENERATE_BODY,
    MODEL,
    RESULTS,
    _closed_loop,
    generate_path,
    markdown_table,
    percentile,
    run_async,
    start_fake,
    start_proxy,
    stop_all,
    wait_ready,
    write_json,
)

PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/12"
LATENCY_SLICE_S = 0.5  # c=1 latency: embedded and cluster take turns in slices this long
ROOMY = json.dumps({MODEL: {"rpm": 1_000_000, "rpd": 100_000_000}})
PROJECTS = 5
RPM = 10
HEADERS = {"content-type": "application/json", "x-goog-api-key": CLIENT_TOKEN}


# ------------------------------------------------------------------------------------------------ services
def _admin() -> duckdb.DuckDBPyConnection:
    from proxy_service.cluster.config import pg_conninfo
    from proxy_service.cluster.lake import _lit, load_extensions

    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    load_extensions(con)
    con.execute(f"ATTACH {_lit(pg_conninfo(PG + '/postgres'))} AS pgadmin (TYPE postgres)")
    return con


@contextlib.contextmanager
def lake_database(keep: str | None = None) -> Iterator[str]:
    """A throwaway catalog database, dropped after; `keep`: that database, created if missing and left in place."""
    name = keep or f"keyrack_bench_{secrets.token_hex(4)}"
    con = _admin()
    sql = f"SELECT 1 FROM pg_database WHERE datname = ''{name}''"
    if not con.execute(f"SELECT * FROM postgres_query('pgadmin', '{sql}')").fetchall():
        con.execute(f"CALL postgres_execute('pgadmin', 'CREATE DATABASE {name}', use_transaction => false)")
    con.close()
    if keep:
        yield f"{PG}/{name}"
        return
    try:
        yield f"{PG}/{name}"
    finally:
        con = _admin()
        sql = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        con.execute(f"CALL postgres_execute('pgadmin', '{sql}', use_transaction => false)")
        con.close()


def cluster_env(catalog: str, lake: Path, replica: str, redis_url: str = REDIS) -> dict[str, str]:
    return {
        "KEYRACK_REDIS_URL": redis_url,
        "KEYRACK_LAKE_CATALOG": catalog,
        "KEYRACK_LAKE_DATA": str(lake),
        "KEYRACK_REPLICA_ID": replica,
    }


def _key(name: str) -> str:
    import hashlib

    return "AIza" + hashlib.sha256(name.encode()).hexdigest()[:35]  # shaped like a Gemini key


def keys() -> str:
    return ",".join(f"p{p}:{_key(f'p{p}-{k}')}" for p in range(1, PROJECTS + 1) for k in "ab")


def scenario(rpm: int | None) -> dict[str, Any]:
    projects = {f"p{p}": [_key(f"p{p}-{k}") for k in "ab"] for p in range(1, PROJECTS + 1)}
    return {"projects": projects, "seed": 1, **({"limits": {MODEL: {"rpm": rpm}}} if rpm else {})}


# ------------------------------------------------------------------------------------------------ 1 + 2
def latency_and_throughput(work: Path, catalog: str, duration: float, strategy: str = "quota_aware") -> dict[str, Any]:
    fake = start_fake(work, scenario(None), name="fake-speed")
    opts: dict[str, Any] = {"model_limits": ROOMY, "strategy": strategy}
    embedded = start_proxy(work, fake.url, keys(), name="embedded", **opts)
    r1 = start_proxy(work, fake.url, keys(), name="r1", env=cluster_env(catalog, work / "lake", "r1"), **opts)
    r2 = start_proxy(work, fake.url, keys(), name="r2", env=cluster_env(catalog, work / "lake", "r2"), **opts)
    servers = [fake, embedded, r1, r2]
    try:
        wait_ready(servers, timeout=180)
        url = generate_path(MODEL)
        for s in (embedded, r1, r2):  # warm-up: connections, first lake commit
            run_async(_closed_loop(s.url + url, GENERATE_BODY, HEADERS, 4, 1.0, 10**6, 30))
        # Alternate short slices: on a shared 2-core machine the load drifts within seconds, and back-to-back runs
        # of `duration` s each measured that drift (±0.5 ms) more than the cluster's cost.
        emb_ms: list[float] = []
        one_ms: list[float] = []
        for _ in range(max(2, round(duration / LATENCY_SLICE_S))):
            for server, out in ((embedded, emb_ms), (r1, one_ms)):
                res = run_async(_closed_loop(server.url + url, GENERATE_BODY, HEADERS, 1, LATENCY_SLICE_S, 10**6, 30))
                out += res.latencies_ms
        p50_emb = statistics.median(emb_ms)
        p50_one = statistics.median(one_ms)
        single = run_async(_closed_loop(r1.url + url, GENERATE_BODY, HEADERS, 32, duration, 10**6, 30))

        async def both() -> list[Any]:
            return list(
                await asyncio.gather(
                    *(_closed_loop(r.url + url, GENERATE_BODY, HEADERS, 16, duration, 10**6, 30) for r in (r1, r2))
                )
            )

        pair = run_async(both())
        rps_single = single.ok / single.elapsed_s
        rps_pair = sum(p.ok for p in pair) / max(p.elapsed_s for p in pair)
        return {
            "strategy": strategy,
            "p50_embedded_ms": p50_emb,
            "p50_cluster_ms": p50_one,
            "added_p50_ms": p50_one - p50_emb,
            "p99_cluster_ms": percentile(sorted(one_ms), 99),
            "rps_1_replica": rps_single,
            "rps_2_replicas": rps_pair,
            "ratio_2_vs_1": rps_pair / rps_single if rps_single else 0.0,
            "errors": single.failures
            + sum(p.failures for p in pair)
            + sum(n for s, n in single.statuses.items() if s != 200),
        }
    finally:
        stop_all(servers)


# ------------------------------------------------------------------------------------------------ 3
def ideal(send_times: list[float], per_minute: int) -> int:
    admitted: list[float] = []
    for t in sorted(send_times):
        if len(admitted) < per_minute or admitted[-per_minute] + 60.0 <= t:
            admitted.append(t)
    return len(admitted)


async def _open_loop(urls: list[str], per_minute: float, minutes: float) -> list[tuple[float, int | None]]:
    out: list[tuple[float, int | None]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(url: str, sent: float) -> None:
            try:
                async with session.post(url, data=GENERATE_BODY, headers=HEADERS) as resp:
                    await resp.read()
                    out.append((sent, resp.status))
            except (aiohttp.ClientError, TimeoutError):
                out.append((sent, None))

        tasks = []
        for i in range(round(per_minute * minutes)):
            delay = start + i * 60.0 / per_minute - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(urls[i % len(urls)], i * 60.0 / per_minute)))
        await asyncio.gather(*tasks)
    return out


def quota(work: Path, catalog: str, minutes: float, load: float) -> dict[str, Any]:
    limits = json.dumps({MODEL: {"rpm": RPM}})
    fake1 = start_fake(work, scenario(RPM), name="fake-q1")
    fake3 = start_fake(work, scenario(RPM), name="fake-q3")
    single = start_proxy(work, fake1.url, keys(), model_limits=limits, name="q-single")
    replicas = [
        start_proxy(
            work,
            fake3.url,
            keys(),
            model_limits=limits,
            name=f"q-r{i}",
            env=cluster_env(catalog, work / "qlake", f"q{i}", "redis://127.0.0.1:6379/11"),
        )
        for i in range(1, 4)
    ]
    servers = [fake1, fake3, single, *replicas]
    try:
        wait_ready(servers, timeout=180)
        path = generate_path(MODEL)

        async def both() -> list[Any]:
            return list(
                await asyncio.gather(
                    _open_loop([single.url + path], load, minutes),
                    _open_loop([r.url + path for r in replicas], load, minutes),
                )
            )

        out1, out3 = run_async(both())
        rows = {}
        for name, out, fake in (("1 replica (embedded)", out1, fake1), ("3 replicas", out3, fake3)):
            stats = json.loads(_get(fake.url + "/_fake/stats"))
            ok = sum(1 for _, s in out if s == 200)
            cap = ideal([t for t, _ in out], PROJECTS * RPM)
            attempts = stats["by_operation"].get("generateContent", 0)
            rows[name] = {
                "demand": len(out),
                "ok": ok,
                "capacity": cap,
                "served_share": ok / cap if cap else 0.0,
                "upstream_429": stats["by_status"].get("429", 0),
                "attempts_per_success": attempts / ok if ok else float("inf"),
            }
        return rows
    finally:
        stop_all(servers)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


# ------------------------------------------------------------------------------------------------ 4
def _writer_proc(catalog: str, lake: str, replica: str, events: int, spill: str, out: Any) -> None:
    import uuid

    from proxy_service.analytics.rollup import Rollup, fold_batch
    from proxy_service.cluster.config import ClusterConfig
    from proxy_service.cluster.lake import LakeStore
    from proxy_service.cluster.writer import LakeWriter
    from proxy_service.events import RequestEvent

    client = redis.Redis.from_url(REDIS)

    def lock() -> Any:
        return client.lock("keyrack:lock:init", timeout=120, blocking_timeout=120)

    cfg = ClusterConfig(REDIS, catalog, lake, replica)
    store = LakeStore(cfg, lock)
    writer = LakeWriter(store, replica, Path(spill), 1.0, init_lock=lock)
    writer.before_commit.append(
        lambda cur, t: fold_batch(cur, t["requests"].drop_columns(["replica"])) if "requests" in t else None
    )
    writer.submit(Rollup().install).result()  # under the init lock, as a replica does at startup
    writer.start()
    t0 = time.perf_counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    for i in range(events):
        writer.record(
            RequestEvent(
                ts=now,
                request_id=uuid.uuid4().hex,
                client_id="bench",
                surface="gemini",
                operation="generateContent",
                model=MODEL,
                stream=False,
                status=200,
                key_id=f"k{i % 100}",
                project=f"p{i % 5}",
                latency_ms=float(100 + i % 900),
            )
        )
        if i % 20_000 == 0:
            time.sleep(0.001)
    writer.stop(120)
    out.put((replica, time.perf_counter() - t0, writer.stats.written["requests"], writer.stats.failures))
    store.close()


def ingest(work: Path, catalog: str, events: int) -> dict[str, Any]:
    from proxy_service.cluster.config import ClusterConfig
    from proxy_service.cluster.lake import LakeStore

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    lake = str(work / "ilake")
    procs = [
        ctx.Process(target=_writer_proc, args=(catalog, lake, f"w{i}", events, str(work / f"spill{i}"), out))
        for i in range(3)
    ]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    wall = time.perf_counter() - t0
    store = LakeStore(ClusterConfig(REDIS, catalog, lake, "reader"), contextlib.nullcontext)
    cur = store.cursor()
    rows = dict(cur.execute("SELECT replica, count(*) FROM requests GROUP BY 1").fetchall())
    rolled = cur.execute("SELECT sum(calls) FROM preagg WHERE grain = '15m' AND a = ''").fetchone()
    store.close()
    total = sum(r[2] for r in results)
    slowest = max(r[1] for r in results)
    return {
        "writers": 3,
        "events": 3 * events,
        "committed": sum(rows.values()),
        "lost": 3 * events - sum(rows.values()),
        "events_per_s": total / slowest,
        "wall_s": wall,
        "failures": sum(r[3] for r in results),
        "rollup_matches": bool(rolled and rolled[0] == sum(rows.values())),
    }


# ------------------------------------------------------------------------------------------------ 5
def analytics(work: Path, catalog: str, rows: int, runs: int, keep: Path | None = None) -> dict[str, Any]:
    """The same `rows` synthetic rows (bench.analytics' generator) in an embedded file and in the lake, the same
    queries through `queries` on both, timed alternately (embedded, lake, embedded, ...) so that the machine's load
    hits both sides alike. `keep`: build both in that directory once (with its catalog database, see --keep) and
    reuse them, with the first run's `now`, in later runs with the same --rows."""
    import os

    from bench.analytics import GENERATE, MODELS, build
    from proxy_service.analytics import queries
    from proxy_service.analytics.rollup import Rollup
    from proxy_service.cluster.config import ClusterConfig
    from proxy_service.cluster.lake import LakeStore
    from proxy_service.store import StatsSource, Store

    home = keep or work
    home.mkdir(parents=True, exist_ok=True)
    manifest = home / "analytics.json"
    built = json.loads(manifest.read_text()) if manifest.exists() else {}
    if built.get("rows") != rows:
        built = {}
    lake = LakeStore(ClusterConfig(REDIS, catalog, str(home / "alake"), "analytics"), contextlib.nullcontext)
    cur = lake.cursor()
    if built and cur.execute("SELECT count(*) FROM requests").fetchone() != (rows,):
        built = {}  # the catalog database was dropped or the build did not finish: build again
    reused = bool(built)
    if not built:
        end = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        (home / "emb.duckdb").unlink(missing_ok=True)
        t0 = time.perf_counter()
        build(home / "emb.duckdb", rows, end)
        built["embedded_build_s"] = time.perf_counter() - t0
        cur.execute("DELETE FROM requests")
        t0 = time.perf_counter()
        step_us = 90 * 86400 * 1_000_000 // max(rows, 1)
        cur.execute(GENERATE.format(clients=7), [MODELS, end, rows, step_us, rows])
        built["lake_generate_s"] = time.perf_counter() - t0
        Rollup().install(cur)
        built["lake_build_s"] = time.perf_counter() - t0
        built["now"] = datetime.now(UTC).replace(tzinfo=None).isoformat()
        built["rows"] = rows
        if keep:
            manifest.write_text(json.dumps(built))
    emb = Store(home / "emb.duckdb")
    t0 = time.perf_counter()
    lake.mirror.catch_up()  # what a replica's mirror thread does at its first read
    mirror_load_s = time.perf_counter() - t0
    mirror_rows = sum(lake.mirror.size().values())
    tz = ZoneInfo("America/New_York")
    now = datetime.fromisoformat(built["now"])
    start = now - timedelta(days=90)
    load = [os.getloadavg()[0]]
    out = []
    shapes: list[tuple[str, Callable[[duckdb.DuckDBPyConnection, StatsSource], Any]]] = [
        ("summary", lambda c, src: queries.summary(c, tz, now, source=src)),
        (
            "series day (90 d)",
            lambda c, src: queries.series(
                c, "day", "none", tz, *queries.series_range("day", tz, start, now, now), source=src
            ),
        ),
        (
            "series hour (90 d)",
            lambda c, src: queries.series(
                c, "hour", "none", tz, *queries.series_range("hour", tz, start, now, now), source=src
            ),
        ),
        ("top models (90 d)", lambda c, src: queries.top(c, "model", start, now, 10, source=src)),
    ]
    for name, fn in shapes:
        ms: dict[str, list[float]] = {"embedded": [], "lake": []}
        for _ in range(runs + 1):  # the first round warms up
            for label, store in (("embedded", emb), ("lake", lake)):
                t = time.perf_counter()
                with store.stats_reader() as (c, src):  # as Gateway.read_stats: the lake's catches its mirror up
                    fn(c, src)
                ms[label].append((time.perf_counter() - t) * 1000)
        ms = {label: v[1:] for label, v in ms.items()}
        times = {label: statistics.median(v) for label, v in ms.items()}
        out.append({"query": name, **times, "ratio": times["lake"] / times["embedded"] if times["embedded"] else 0})
    load.append(os.getloadavg()[0])
    files = cur.execute("SELECT count(*) FROM ducklake_list_files('lake', 'requests')").fetchone()
    lake.close()
    emb.close()
    return {
        "rows": rows,
        "reused": reused,
        "embedded_build_s": built["embedded_build_s"],
        "lake_generate_s": built["lake_generate_s"],
        "lake_build_s": built["lake_build_s"],
        "requests_files": files[0] if files else 0,
        "load": load,
        "mirror_load_s": mirror_load_s,
        "mirror_rows": mirror_rows,
        "figures": out,
    }


# ------------------------------------------------------------------------------------------------ 6
async def _tracked(url: str, workers: int, until: list[bool]) -> list[tuple[str, float]]:
    """Closed-loop clients; (request id, monotonic time of the answer) for every 200, until `until[0]`."""
    out: list[tuple[str, float]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def worker() -> None:
            while not until[0]:
                try:
                    async with session.post(url, data=GENERATE_BODY, headers=HEADERS) as resp:
                        await resp.read()
                        if resp.status == 200:
                            out.append((resp.headers["x-keyrack-request-id"], time.monotonic()))
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker() for _ in range(workers)))
    return out


def sigkill(work: Path, catalog: str, seconds: float) -> dict[str, Any]:
    """Load one replica for `seconds`, SIGKILL it, restart it on the same data dir (its journal is replayed) and
    count the answered requests missing from the lake: before the restart (what the commit window alone loses) and
    after (what the 0.1 s journal loses), with the age of the oldest missing answer at the kill."""
    from proxy_service.cluster.config import ClusterConfig
    from proxy_service.cluster.lake import LakeStore

    fake = start_fake(work, scenario(None), name="fake-kill")
    env = cluster_env(catalog, work / "klake", "k1")
    r1 = start_proxy(work, fake.url, keys(), model_limits=ROOMY, name="k1", env=env)
    servers = [fake, r1]
    try:
        wait_ready(servers, timeout=180)
        stop = [False]

        async def load_then_kill() -> tuple[list[tuple[str, float]], float]:
            task = asyncio.ensure_future(_tracked(r1.url + generate_path(MODEL), 8, stop))
            await asyncio.sleep(seconds)
            r1.proc.kill()
            killed = time.monotonic()
            await asyncio.sleep(0.5)
            stop[0] = True
            return await task, killed

        answers, killed_at = run_async(load_then_kill())
        r1.proc.wait(10)
        reader = LakeStore(ClusterConfig(REDIS, catalog, str(work / "klake"), "reader"), contextlib.nullcontext)

        def stored() -> set[str]:
            cur = reader.cursor()
            try:
                return {r[0] for r in cur.execute("SELECT request_id FROM requests WHERE replica = 'k1'").fetchall()}
            finally:
                cur.close()

        answered = {rid for rid, _ in answers}
        at = dict(answers)
        before = answered - stored()
        again = start_proxy(work, fake.url, keys(), model_limits=ROOMY, name="k1", env=env)  # same data dir
        servers.append(again)
        wait_ready([again], timeout=180)
        spill = work / "k1-data" / "spill"
        deadline = time.monotonic() + 60
        while list(spill.glob("*.arrow")) and time.monotonic() < deadline:
            time.sleep(0.1)
        after = answered - stored()
        cur = reader.cursor()
        found = cur.execute(
            "SELECT count(*) - count(DISTINCT request_id) FROM requests WHERE replica = 'k1'"
        ).fetchone()
        cur.close()
        reader.close()

        def oldest_ms(missing: set[str]) -> float:
            return max(((killed_at - at[r]) * 1000 for r in missing), default=0.0)

        return {
            "answered": len(answered),
            "rps": len(answered) / seconds,
            "missing_before_restart": len(before),
            "oldest_missing_before_restart_ms": oldest_ms(before),
            "lost": len(after),
            "oldest_lost_ms": oldest_ms(after),
            "committed_twice": int(found[0]) if found else 0,
        }
    finally:
        stop_all(servers)


# ------------------------------------------------------------------------------------------------ main
def report(f: dict[str, Any]) -> str:
    return markdown_table(["metric", "value", "baseline", "target", "met"], report_rows(f))


def report_rows(f: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    if "speed" in f:
        rows += _speed_rows(f["speed"])
    if "quota" in f:
        rows += _quota_rows(f["quota"])
    if "ingest" in f:
        i = f["ingest"]
        rows.append(
            [
                "lake ingest, 3 writers",
                f"{i['events_per_s']:,.0f} events/s",
                f"{i['committed']:,} committed, {i['lost']} lost, rollup exact: {i['rollup_matches']}",
                "0 lost",
                "yes" if i["lost"] == 0 else "NO",
            ]
        )
    if "sigkill" in f:
        k = f["sigkill"]
        rows.append(
            [
                "SIGKILL one replica under load: answered requests lost",
                f"{k['lost']} (oldest {k['oldest_lost_ms']:.0f} ms before the kill), "
                f"{k.get('committed_twice', 0)} committed twice",
                f"{k['missing_before_restart']} of "
                f"{k['answered']:,} not committed at the kill (oldest {k['oldest_missing_before_restart_ms']:.0f}"
                " ms): the commit window",
                "≤ 0.1 s journal window, none twice",
                "–",
            ]
        )
    if "analytics" in f:
        a = f["analytics"]
        rows.append(
            [
                f"analytics lake build, {a['rows']:,} rows",
                f"{a['lake_build_s']:,.0f} s (generate {a['lake_generate_s']:,.0f} s)"
                + (" (--keep: built earlier)" if a.get("reused") else ""),
                f"embedded file {a['embedded_build_s']:,.0f} s",
                f"load {a['load'][0]:.1f} → {a['load'][1]:.1f}",
                "–",
            ]
        )
        rows.append(
            [
                "analytics: rollup mirror load (per replica)",
                f"{a['mirror_load_s']:,.1f} s",
                f"{a['mirror_rows']:,} rows",
                "–",
                "–",
            ]
        )
        for x in a["figures"]:
            rows.append(
                [
                    f"analytics {a['rows']:,} rows: {x['query']} p50",
                    f"lake {x['lake']:,.0f} ms",
                    f"embedded {x['embedded']:,.0f} ms ({x['ratio']:.1f}x)",
                    "≤ 2x",
                    "yes" if x["ratio"] <= 2 else "NO",
                ]
            )
    return rows


def _speed_rows(s: dict[str, Any]) -> list[list[Any]]:
    return [
        [
            f"added p50 latency, c=1 ({s.get('strategy', 'quota_aware')})",
            f"{s['added_p50_ms']:.2f} ms",
            f"embedded {s['p50_embedded_ms']:.2f} ms",
            "≤ 1 ms",
            "yes" if s["added_p50_ms"] <= 1.0 else "NO",
        ],
        [
            "req/s 2 replicas vs 1 (c=32)",
            f"{s['rps_2_replicas']:,.0f} vs {s['rps_1_replica']:,.0f}",
            f"{s['ratio_2_vs_1']:.2f}x",
            "",
            "–",
        ],
    ]


def _quota_rows(q: dict[str, Any]) -> list[list[Any]]:
    rows = []
    single = q["1 replica (embedded)"]
    for name, r in q.items():
        ok = r["served_share"] >= 0.99 and r["attempts_per_success"] <= 1.05
        if name != "1 replica (embedded)":
            ok = ok and r["upstream_429"] <= single["upstream_429"] + 2
        rows.append(
            [
                f"quota pressure, {name}: served / 429s / attempts per success",
                f"{r['served_share']:.1%} / {r['upstream_429']} / {r['attempts_per_success']:.3f}",
                f"{r['ok']} of capacity {r['capacity']} (demand {r['demand']})",
                "≥ 99 %, ≤ single + 2, ≤ 1.05",
                "yes" if ok else "NO",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--load", type=float, default=80.0)
    ap.add_argument("--events", type=int, default=100_000, help="per writer")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", default="speed,quota,ingest,analytics,sigkill")
    ap.add_argument(
        "--keep",
        type=Path,
        help="analytics: build the lake and the embedded file in this directory (catalog database "
        "keyrack_bench_keep_<rows>) and reuse them in later runs with the same --rows",
    )
    ap.add_argument("--strategy", default="quota_aware", help="the pool strategy of the speed section")
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    for db in (12, 11):
        redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}").flushdb()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="keyrack-bench-cluster-") as tmp:
        work = Path(tmp)
        sections = {
            "speed": lambda c: latency_and_throughput(work, c, args.duration, args.strategy),
            "quota": lambda c: quota(work, c, args.minutes, args.load),
            "ingest": lambda c: ingest(work, c, args.events),
            "analytics": lambda c: analytics(work, c, args.rows, args.runs, args.keep),
            "sigkill": lambda c: sigkill(work, c, args.duration),
        }
        for name, run in sections.items():
            if name in only:
                keep = f"keyrack_bench_keep_{args.rows}" if name == "analytics" and args.keep else None
                with lake_database(keep) as catalog:
                    figures[name] = run(catalog)
    print(report(figures))
    write_json(RESULTS / "cluster.json", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
