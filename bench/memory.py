"""Memory: the proxy's RSS at start, after the c=32 throughput load and through a soak; the dashboard's RSS.

    python -m bench.memory [--load 20] [--soak 60] [--no-dashboard] [--no-baseline]

`keyrack serve` runs as its own process in front of the fake upstream (zero latency, no limits, 8 pool keys), as in
bench/proxy_throughput.py. RSS is read from /proc/<pid>/status: `VmRSS` = `RssAnon` (heap, arenas, DuckDB's
buffers: what grows) + `RssFile` (mapped shared libraries and files: libduckdb, libarrow, ...) + `RssShmem`.
Beside it, DuckDB's own account of what it holds (`duckdb_memory()`, which the proxy's /metrics reports as
`keyrack_duckdb_memory_bytes`), and at steady state the RSS by mapping (/proc/<pid>/smaps).
Phases: ready (idle) → c=32 closed loop for `--load` s → a soak at c=8 for `--soak` s with a sample every 5 s →
idle again. "steady" is the largest sample of the soak's second half. Then `keyrack dashboard` is started against
the same proxy and, when Chromium is installed, every page is opened once in headless Chromium (signed in) before
its RSS is read (a Streamlit server holds one script run per session; without a session it is only the server).

Baseline, in the same run (unless --no-baseline): the same phases with DuckDB's own defaults for the three choices
Keyrack makes about its memory, 256 KB blocks for the new database file (`KEYRACK_DUCKDB_BLOCK_SIZE`), 122,880-row
row groups (`KEYRACK_DUCKDB_ROW_GROUP_SIZE`) and the allocator's 5 s decay (`DUCKDB_JE_MALLOC_CONF`, see
proxy_service/server.py). Both runs have what the proxy does in code: glibc's free heap memory returned every
second and DuckDB's unused library pages every minute (proxy_service/heap.py), DuckDB's cache of checkpointed
blocks cut back to 4 MB every 10 s and after each rollup compaction (`Store.trim_cache`), no pandas and no httpx
command-line client loaded.

What the figures depend on: the soak's request rate (the closed loop sends as fast as the proxy answers, so a less
loaded machine writes more rows: DuckDB's appended rows, cache and the rollup's periodic work grow with them) and
when a sample falls on a fold of new rows into the rollup (every 2 s) or on a checkpoint (DuckDB's working memory
for them shows as a brief spike).
Compare runs at similar rates; the report prints the rate and the load average.

Target: steady RSS ≤ 150 MB for `keyrack serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ADMIN_TOKEN,
    HOST,
    NO_LIMITS,
    RESULTS,
    Server,
    _spawn,
    closed_loop,
    free_port,
    generate_path,
    load_average,
    markdown_table,
    start_fake,
    start_proxy,
    wait_ready,
    write_json,
)
from proxy_service.demo.scenario import demo_key

TARGET_STEADY_MB = 150.0
# Gemini-shaped keys: Keyrack refuses to start on text that cannot be a key.
POOL_KEYS = ",".join(f"p{i // 2 + 1}:{demo_key(f'bench-{i:02d}')}" for i in range(8))
CHROMIUM = Path("/usr/bin/chromium")
PAGES = ("", "trends", "error_logs", "config", "sql")
# DuckDB's defaults for what Keyrack sets (settings.DUCKDB_BLOCK_SIZE, DUCKDB_ROW_GROUP_SIZE, server.ALLOCATOR_CONF):
# the baseline.
DUCKDB_DEFAULTS = {
    "KEYRACK_DUCKDB_BLOCK_SIZE": "262144",
    "KEYRACK_DUCKDB_ROW_GROUP_SIZE": "122880",
    "DUCKDB_JE_MALLOC_CONF": "dirty_decay_ms:5000,muzzy_decay_ms:5000",
}


# Where the start-up RSS goes: the proxy's imports and start, step by step, in a fresh interpreter (as `serve` does).
BREAKDOWN = """
import json, os, sys
steps = []
def mark(label):
    d = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            d[k] = int(v.split()[0]) / 1024
    steps.append((label, d))
mark("Python")
from proxy_service.server import without_pandas
without_pandas()
mark("Keyrack's startup checks, settings, pydantic")
import duckdb
mark("duckdb")
import starlette.applications, uvicorn, httpx, httpx_aiohttp, aiohttp
mark("web stack (Starlette, uvicorn, httpx, aiohttp)")
import proxy_service.app
mark("Keyrack's modules, prometheus-client")
from proxy_service.app import create_app
from proxy_service.settings import Settings
create_app(Settings())
mark("open the database: schema, safe views, rollup, keys")
heavy = [m for m in ("pyarrow", "numpy", "pandas") if m in sys.modules]
steps.append(("not loaded: pyarrow, numpy, pandas" if not heavy else "LOADED: " + ", ".join(heavy), steps[-1][1]))
print(json.dumps(steps))
"""


def import_breakdown(workdir: Path) -> list[dict[str, Any]]:
    import json
    import os
    import subprocess

    env = {**os.environ, "KEYRACK_DATA_DIR": str(workdir / "breakdown"), "KEYRACK_API_KEYS": POOL_KEYS}
    env = {
        k: v for k, v in env.items() if not k.startswith("KEYRACK_") or k in ("KEYRACK_DATA_DIR", "KEYRACK_API_KEYS")
    }
    res = subprocess.run(
        [sys.executable, "-c", BREAKDOWN], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    steps = json.loads(res.stdout.strip().splitlines()[-1])
    out, before = [], {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    for label, now in steps:
        out.append(
            {"step": label, **{k: round(now[k] - before[k], 1) for k in before}, "total": round(now["VmRSS"], 1)}
        )
        before = now
    return out


def rss(pid: int) -> dict[str, float]:
    """VmRSS and its parts (MB) of a running process (and its threads)."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[name] = round(int(value.split()[0]) / 1024, 1)
    with open(f"/proc/{pid}/stat") as f:  # major page faults so far: pages read back from a file (heap.py's reclaim)
        out["majflt"] = int(f.read().rsplit(")", 1)[1].split()[9])
    return out


def duckdb_memory(url: str) -> dict[str, float]:
    """DuckDB's own account (MB by tag) as the proxy's /metrics reports it (`keyrack_duckdb_memory_bytes`)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("keyrack_duckdb_memory_bytes{"):
            tag = line.split('tag="', 1)[1].split('"', 1)[0]
            out[tag] = round(float(line.rsplit(" ", 1)[1]) / 2**20, 1)
    return out


def rss_by_mapping(pid: int) -> dict[str, float]:
    """Where the RSS sits (MB), from /proc/<pid>/smaps: DuckDB's library and the other mapped files (shared,
    clean pages), the main heap (glibc's first arena: Python objects and C/C++ allocations of the main thread), and
    every other anonymous mapping (DuckDB's own allocator, glibc's per-thread arenas, Python's object arenas,
    thread stacks)."""
    out = {"file: DuckDB's library": 0.0, "file: other libraries and files": 0.0, "anon: [heap]": 0.0}
    out["anon: other mappings"] = 0.0
    name, kb = "", 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                name = head[5].strip() if len(head) > 5 else ""
            elif head[0] == "Rss:":
                kb = int(head[1])
                if "_duckdb" in name:
                    key = "file: DuckDB's library"
                elif name.startswith("/"):
                    key = "file: other libraries and files"
                elif name == "[heap]":
                    key = "anon: [heap]"
                else:
                    key = "anon: other mappings"
                out[key] += kb / 1024
    return {k: round(v, 1) for k, v in out.items()}


def _sample(label: str, server: Server, samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    s: dict[str, Any] = {"phase": label, "t_s": round(time.monotonic() - t0, 1), **rss(server.proc.pid)}
    with contextlib.suppress(OSError, ValueError):
        s["duckdb"] = duckdb_memory(server.url)
        s["DuckDB"] = round(sum(s["duckdb"].values()), 1)
    with contextlib.suppress(OSError):
        s["mappings"] = rss_by_mapping(server.proc.pid)
    samples.append(s)
    return s


def proxy_phases(workdir: Path, fake: Server, load_s: float, soak_s: float, env: dict[str, str]) -> dict[str, Any]:
    proxy = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, env=env)
    samples: list[dict[str, Any]] = []
    url = proxy.url + generate_path()
    try:
        wait_ready([proxy])
        t0 = time.monotonic()
        time.sleep(2.0)  # the lifespan's first ticks (jobs scheduled, first flush) before "at start"
        start = _sample("start", proxy, samples, t0)
        load = closed_loop(url, concurrency=32, duration=load_s)
        after_load = _sample("after c=32", proxy, samples, t0)
        soak_requests = 0
        soak_end = time.monotonic() + soak_s
        while time.monotonic() < soak_end:
            r = closed_loop(url, concurrency=8, duration=min(5.0, max(0.5, soak_end - time.monotonic())))
            soak_requests += r.responses
            _sample("soak", proxy, samples, t0)
        time.sleep(3.0)
        idle = _sample("idle after", proxy, samples, t0)
    finally:
        proxy.stop()
    soak = [s for s in samples if s["phase"] == "soak"]
    second_half = soak[len(soak) // 2 :] or soak
    steady = max(second_half, key=lambda s: s["VmRSS"]) if second_half else after_load
    half = sorted(s["VmRSS"] for s in second_half)
    return {
        "second_half": {"median": half[len(half) // 2], "min": half[0], "samples": len(half)} if half else None,
        "soak_major_faults": soak[-1]["majflt"] - after_load["majflt"] if soak else 0,
        "start": start,
        "after_load": after_load,
        "steady": steady,
        "idle_after": idle,
        "peak_mb": max(s.get("VmHWM", 0.0) for s in samples),
        "load_rps_c32": round(load.rps, 1),
        "load_errors": load.errors,
        "soak_requests": soak_requests,
        "samples": samples,
    }


def _open_pages(dashboard_url: str) -> str:
    """Open every page once in headless Chromium, signing in when asked. Returns what was done (for the report)."""
    if not CHROMIUM.exists():
        return "no Chromium: server only, no session"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "no Playwright: server only, no session"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = ctx.new_page()
            page.set_default_timeout(30_000)
            page.goto(dashboard_url)
            with contextlib.suppress(Exception):
                field = page.get_by_label("Admin token")
                field.wait_for(timeout=10_000)
                field.fill(ADMIN_TOKEN)
                page.get_by_role("button", name="Sign in").click()
            page.wait_for_timeout(3_000)
            for name in PAGES[1:]:
                page.goto(f"{dashboard_url}/{name}")
                page.wait_for_timeout(3_000)
        finally:
            ctx.close()
    return f"signed in, {len(PAGES)} pages opened in Chromium"


def dashboard_phase(workdir: Path, fake: Server, env: dict[str, str]) -> dict[str, Any]:
    proxy = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, env=env, name="proxy-for-dashboard")
    port = free_port()
    url = f"http://{HOST}:{port}"
    args = [sys.executable, "-m", "proxy_service.cli", "dashboard", "--host", HOST, "--port", str(port)]
    dash_env = {"KEYRACK_ADMIN_URL": proxy.url, "KEYRACK_ADMIN_TOKEN": ADMIN_TOKEN}
    dash = _spawn("dashboard", args, workdir, dash_env, url)
    try:
        wait_ready([proxy, dash], timeout=120)
        closed_loop(proxy.url + generate_path(), concurrency=4, duration=3)  # some data for the pages
        idle = rss(dash.proc.pid)
        how = _open_pages(url)
        time.sleep(2.0)
        used = rss(dash.proc.pid)
    finally:
        dash.stop()
        proxy.stop()
    return {"idle": idle, "after_pages": used, "how": how}


def run(load_s: float, soak_s: float, dashboard: bool, baseline: bool = True) -> dict[str, Any]:
    load_before = load_average()
    env: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="keyrack-mem-") as tmp:
        workdir = Path(tmp)
        breakdown = import_breakdown(workdir)
        fake = start_fake(workdir)
        try:
            wait_ready([fake])
            base = (
                proxy_phases(workdir / "baseline", fake, load_s, soak_s, {**env, **DUCKDB_DEFAULTS})
                if baseline
                else None
            )
            proxy = proxy_phases(workdir, fake, load_s, soak_s, env)
            dash = dashboard_phase(workdir, fake, env) if dashboard else None
        finally:
            fake.stop()
    steady = proxy["steady"]["VmRSS"]
    return {
        "load_s": load_s,
        "soak_s": soak_s,
        "load_average": [load_before, load_average()],
        "proxy": proxy,
        "baseline": base,
        "breakdown": breakdown,
        "dashboard": dash,
        "proxy_steady_mb": steady,
        "dashboard_mb": dash["after_pages"]["VmRSS"] if dash else None,
        "targets": {"proxy_steady_mb": {"target": f"<= {TARGET_STEADY_MB:g}", "met": steady <= TARGET_STEADY_MB}},
    }


def report(f: dict[str, Any]) -> str:
    p, base = f["proxy"], f.get("baseline")
    rows = [
        [name, s["VmRSS"], s.get("RssAnon", 0.0), s.get("RssFile", 0.0), s.get("RssShmem", 0.0), s.get("DuckDB", "")]
        for name, s in (
            ("proxy at start", p["start"]),
            (f"proxy after c=32 ({f['load_s']:g} s, {p['load_rps_c32']:,.0f} req/s)", p["after_load"]),
            (f"proxy steady (soak {f['soak_s']:g} s, 2nd-half max)", p["steady"]),
            ("proxy idle after", p["idle_after"]),
        )
    ]
    if base:
        rows += [
            [
                name,
                s["VmRSS"],
                s.get("RssAnon", 0.0),
                s.get("RssFile", 0.0),
                s.get("RssShmem", 0.0),
                s.get("DuckDB", ""),
            ]
            for name, s in (
                (f"baseline, DuckDB's defaults: after c=32 ({base['load_rps_c32']:,.0f} req/s)", base["after_load"]),
                ("baseline, DuckDB's defaults: steady", base["steady"]),
                ("baseline, DuckDB's defaults: idle after", base["idle_after"]),
            )
        ]
    d = f["dashboard"]
    if d:
        rows.append(
            [
                "dashboard server, no session",
                d["idle"]["VmRSS"],
                d["idle"].get("RssAnon", 0.0),
                d["idle"].get("RssFile", 0.0),
                d["idle"].get("RssShmem", 0.0),
                "",
            ]
        )
        a = d["after_pages"]
        rows.append(
            [
                f"dashboard ({d['how']})",
                a["VmRSS"],
                a.get("RssAnon", 0.0),
                a.get("RssFile", 0.0),
                a.get("RssShmem", 0.0),
                "",
            ]
        )
    lines = [
        f"### Memory (RSS, MB; server: {f['server']})",
        "",
        markdown_table(["process / phase", "RSS", "anon", "file", "shmem", "DuckDB's own"], rows),
        "",
        f"- proxy peak (VmHWM): {p['peak_mb']:.0f} MB; soak: {p['soak_requests']:,} requests "
        f"({p['soak_requests'] / f['soak_s']:,.0f} req/s), {p['soak_major_faults']:,} major page faults",
        *(
            [
                f"- the soak's second half: {h['samples']} samples, median {h['median']:.0f} MB, min {h['min']:.0f}, "
                f"max {p['steady']['VmRSS']:.0f} (the steady figure)"
            ]
            if (h := p.get("second_half"))
            else []
        ),
        *(
            [
                f"- steady vs the baseline (DuckDB's defaults, same run, before it): {p['steady']['VmRSS']:.0f} / "
                f"{base['steady']['VmRSS']:.0f} MB = {p['steady']['VmRSS'] / base['steady']['VmRSS']:.2f}; c=32 "
                f"throughput {p['load_rps_c32']:,.0f} / {base['load_rps_c32']:,.0f} req/s"
            ]
            if base
            else []
        ),
        f"- machine load average (1 min) before / after: {f['load_average'][0]} / {f['load_average'][1]} on 2 cores",
    ]
    steady = p["steady"]
    if steady.get("mappings"):
        lines += ["", "Steady RSS by mapping (/proc/<pid>/smaps, MB):", ""]
        lines.append(markdown_table(["mapping", "RSS"], list(steady["mappings"].items())))
    if steady.get("duckdb"):
        tags = ", ".join(f"{t} {mb:g}" for t, mb in sorted(steady["duckdb"].items(), key=lambda kv: -kv[1]))
        lines += ["", f"Steady, DuckDB's own account (duckdb_memory(), MB): {tags}"]
    lines += ["", "Start-up RSS by step (fresh interpreter, as `keyrack serve` starts; MB added by each step):", ""]
    lines.append(
        markdown_table(
            ["step", "RSS +", "anon +", "file +", "total"],
            [[b["step"], b["VmRSS"], b["RssAnon"], b["RssFile"], b["total"]] for b in f["breakdown"]],
        )
    )
    for name, t in f["targets"].items():
        lines.append(f"- target {name} {t['target']}: {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=float, default=20.0, help="seconds of c=32 load (default 20)")
    ap.add_argument("--soak", type=float, default=60.0, help="seconds of c=8 soak (default 60)")
    ap.add_argument("--no-dashboard", action="store_true", help="skip the dashboard's RSS")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run with DuckDB's defaults")
    ap.add_argument("--json", type=Path, default=RESULTS / "memory.json", help="where to write the figures")
    args = ap.parse_args(argv)
    figures = run(args.load, args.soak, not args.no_dashboard, not args.no_baseline)
    print(report(figures))
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
