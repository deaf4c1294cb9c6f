"""Memory as users run it: the proxy's RSS through a c=32 load and a soak with the dashboard attached and polling.

    python -m bench.memory [--load 20] [--soak 60] [--no-dashboard] [--no-baseline] [--duckdb-baseline]

`keyrack serve` runs as its own process in front of the fake upstream (zero latency, no limits, 8 pool keys), as in
bench/proxy_throughput.py. RSS is read from /proc/<pid>/status: `VmRSS` = `RssAnon` (heap, arenas, DuckDB's
buffers: what grows) + `RssFile` (mapped shared libraries and files: libduckdb, libarrow, ...) + `RssShmem`.
Beside it, DuckDB's own account of what it holds (`duckdb_memory()`, which the proxy's /metrics reports as
`keyrack_duckdb_memory_bytes`), and at steady state the RSS by mapping (/proc/<pid>/smaps).

Phases: ready (idle) → the dashboard attached (`DashboardPoller`: a real `keyrack dashboard` subprocess and headless
Chromium loading Monitor and Trends in turn, a page every 5 s, Monitor's fastest auto-refresh) → c=32 closed loop
for `--load` s → a soak at c=8 for `--soak` s with a sample every 5 s → the dashboard stopped, idle again. "steady"
is the largest sample of the soak's second half. The target is that figure.

Baseline, in the same run (unless --no-baseline): the same phases with no dashboard, so the report shows what the
dashboard's reads add. `--duckdb-baseline` also runs DuckDB's own defaults for the three choices Keyrack makes about
its memory (256 KB blocks for a new file, 122,880-row row groups, the allocator's 5 s decay; see
proxy_service/server.py and store.py), with no dashboard.

What the figures depend on: the soak's request rate (the closed loop sends as fast as the proxy answers, so a less
loaded machine writes more rows: DuckDB's appended rows, cache and the rollup's periodic work grow with them) and
when a sample falls on a fold of new rows into the rollup or on a checkpoint (DuckDB's working memory for them shows
as a brief spike). Chromium and Streamlit share the machine with the proxy, so the attached soak runs at a lower rate
than the baseline; the report prints both rates and the load average.

Target: steady RSS ≤ 150 MB for `keyrack serve` with the dashboard attached.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ADMIN_TOKEN,
    NO_LIMITS,
    RESULTS,
    Server,
    closed_loop,
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
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'  # a Streamlit script run has ended
POLL_DWELL_S = 5.0  # Monitor's shortest auto-refresh: the dashboard's fastest polling
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
steps.append(("loaded by start: " + (", ".join(heavy) or "none of pyarrow, numpy, pandas"), steps[-1][1]))
import pyarrow, numpy, pyarrow.ipc
mark("pyarrow and numpy (not loaded by an embedded proxy: what they would add)")
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


def arrow_mapped(pid: int) -> bool:
    """Whether the process has Arrow's library mapped (/proc/<pid>/maps: no debugging interface needed)."""
    with open(f"/proc/{pid}/maps") as f:
        return any("/libarrow.so" in line for line in f)


def _sample(label: str, server: Server, samples: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    s: dict[str, Any] = {"phase": label, "t_s": round(time.monotonic() - t0, 1), **rss(server.proc.pid)}
    with contextlib.suppress(OSError, ValueError):
        s["duckdb"] = duckdb_memory(server.url)
        s["DuckDB"] = round(sum(s["duckdb"].values()), 1)
    with contextlib.suppress(OSError):
        s["mappings"] = rss_by_mapping(server.proc.pid)
    samples.append(s)
    return s


class DashboardPoller:
    """The dashboard as users keep it open: a real `keyrack dashboard` subprocess (the tests' harness,
    `tests/dashboard/conftest.running_dashboard`) and one headless Chromium tab signed in with a one-time link that
    loads Monitor, stays on it for a polling interval, loads Trends, stays, and again, until stopped.

    Why a real browser rather than AppTest-style calls of the admin endpoints: the proxy then answers exactly what the
    pages ask for (summary, keys, headroom, forecast, the Arrow series, the 429 story, top keys and models, the alert
    badge), in the dashboard's own order, through its own client and cache, with no list here to keep in step with the
    pages. A page load is a new Streamlit session, so each visit asks the proxy again (no session cache hides a read),
    at least as often as Monitor's auto-refresh would."""

    def __init__(self, admin_url: str, log_dir: Path, dwell_s: float = POLL_DWELL_S) -> None:
        self.admin_url, self.log_dir, self.dwell_s = admin_url, log_dir, dwell_s
        self.loads: dict[str, int] = {"monitor": 0, "trends": 0}
        self.failures: list[str] = []
        self.pid = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)

    def __enter__(self) -> DashboardPoller:
        self._thread.start()
        if not self._ready.wait(180) or self.failures:
            self._stop.set()
            raise RuntimeError(f"the dashboard poller did not start: {self.failures}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        from playwright.sync_api import sync_playwright

        from tests.dashboard.conftest import running_dashboard

        try:
            with (
                running_dashboard(self.admin_url, self.log_dir, admin_token=ADMIN_TOKEN) as dash,
                sync_playwright() as pw,
            ):
                self.pid = dash.pid
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 1200})
                    page.set_default_timeout(120_000)
                    page.goto(dash.link())  # sets the session cookie: every later page load is signed in
                    self._settle(page, "Monitor")  # not the sign-in form: the link signed in
                    self._ready.set()
                    while not self._stop.is_set():
                        for name, path, title in (("monitor", "", "Monitor"), ("trends", "trends", "Trends")):
                            if self._stop.is_set():
                                break
                            try:
                                page.goto(f"{dash.url}/{path}")
                                self._settle(page, title)
                                self.loads[name] += 1
                            except Exception as exc:  # a slow page on a loaded machine: counted, the loop goes on
                                self.failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:80]}")
                            self._stop.wait(self.dwell_s)
                finally:
                    browser.close()
        except Exception as exc:
            self.failures.append(f"start: {exc!r}"[:500])
        finally:
            self._ready.set()

    @staticmethod
    def _settle(page: Any, title: str) -> None:
        """Wait for the page's heading (signed in: not the sign-in form), then for its script run to end."""
        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=120_000)
        page.locator(IDLE).wait_for(timeout=120_000)


def proxy_phases(
    workdir: Path, fake: Server, load_s: float, soak_s: float, env: dict[str, str], dashboard: bool = False
) -> dict[str, Any]:
    """The phases against one proxy; with `dashboard`, a dashboard is attached and polling (DashboardPoller) from
    before the c=32 load to the end of the soak."""
    proxy = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, env=env)
    samples: list[dict[str, Any]] = []
    url = proxy.url + generate_path()
    with contextlib.ExitStack() as stack:
        stack.callback(proxy.stop)
        wait_ready([proxy])
        t0 = time.monotonic()
        time.sleep(2.0)  # the lifespan's first ticks (jobs scheduled, first flush) before "at start"
        start = _sample("start", proxy, samples, t0)
        poller = None
        if dashboard:
            closed_loop(url, concurrency=4, duration=3)  # some data for the pages
            poller = stack.enter_context(DashboardPoller(proxy.url, workdir))
            start = _sample("dashboard attached", proxy, samples, t0)
        load = closed_loop(url, concurrency=32, duration=load_s)
        after_load = _sample("after c=32", proxy, samples, t0)
        soak_requests = 0
        soak_end = time.monotonic() + soak_s
        while time.monotonic() < soak_end:
            r = closed_loop(url, concurrency=8, duration=min(5.0, max(0.5, soak_end - time.monotonic())))
            soak_requests += r.responses
            _sample("soak", proxy, samples, t0)
        arrow = arrow_mapped(proxy.proc.pid)
        polling = None
        if poller is not None:
            polling = {"loads": dict(poller.loads), "failures": poller.failures[-10:], "dwell_s": poller.dwell_s}
            with contextlib.suppress(OSError):
                polling["dashboard_rss"] = rss(poller.pid)
            poller.__exit__()  # the dashboard and its browser go before "idle after"
        time.sleep(3.0)
        idle = _sample("idle after", proxy, samples, t0)
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
        "polling": polling,
        "arrow_mapped": arrow,
        "samples": samples,
    }


def run(
    load_s: float, soak_s: float, dashboard: bool, alone: bool = True, duckdb_baseline: bool = False
) -> dict[str, Any]:
    """The figure as users run it: the proxy with the dashboard attached and polling (`dashboard`); its baseline in
    the same run, the same proxy with no dashboard (`alone`: what the dashboard's reads add); optionally DuckDB's
    defaults with no dashboard (`duckdb_baseline`: what Keyrack's DuckDB settings save)."""
    load_before = load_average()
    env: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="keyrack-mem-") as tmp:
        workdir = Path(tmp)
        breakdown = import_breakdown(workdir)
        fake = start_fake(workdir)
        try:
            wait_ready([fake])
            base = (
                proxy_phases(workdir / "duckdb-defaults", fake, load_s, soak_s, {**env, **DUCKDB_DEFAULTS})
                if duckdb_baseline
                else None
            )
            proxy = proxy_phases(workdir / "attached", fake, load_s, soak_s, env, dashboard=dashboard)
            lone = proxy_phases(workdir / "alone", fake, load_s, soak_s, env) if alone and dashboard else None
        finally:
            fake.stop()
    steady = proxy["steady"]["VmRSS"]
    return {
        "load_s": load_s,
        "soak_s": soak_s,
        "dashboard_attached": dashboard,
        "load_average": [load_before, load_average()],
        "proxy": proxy,
        "alone": lone,
        "baseline": base,
        "breakdown": breakdown,
        "proxy_steady_mb": steady,
        "dashboard_mb": (proxy.get("polling") or {}).get("dashboard_rss", {}).get("VmRSS"),
        "targets": {"proxy_steady_mb": {"target": f"<= {TARGET_STEADY_MB:g}", "met": steady <= TARGET_STEADY_MB}},
    }


def _row(name: str, s: dict[str, Any]) -> list[Any]:
    return [name, s["VmRSS"], s.get("RssAnon", 0.0), s.get("RssFile", 0.0), s.get("RssShmem", 0.0), s.get("DuckDB", "")]


def report(f: dict[str, Any]) -> str:
    p, base, lone = f["proxy"], f.get("baseline"), f.get("alone")
    who = "proxy, dashboard attached" if f.get("dashboard_attached") else "proxy"
    rows = [
        _row(f"{who}: at start", p["start"]),
        _row(f"{who}: after c=32 ({f['load_s']:g} s, {p['load_rps_c32']:,.0f} req/s)", p["after_load"]),
        _row(f"{who}: steady (soak {f['soak_s']:g} s, 2nd-half max)", p["steady"]),
        _row(f"{who}: idle after (dashboard gone)", p["idle_after"]),
    ]
    for label, other in (("same proxy, no dashboard", lone), ("DuckDB's defaults, no dashboard", base)):
        if other:
            rows += [
                _row(f"{label}: after c=32 ({other['load_rps_c32']:,.0f} req/s)", other["after_load"]),
                _row(f"{label}: steady", other["steady"]),
                _row(f"{label}: idle after", other["idle_after"]),
            ]
    polling = p.get("polling")
    if polling and polling.get("dashboard_rss"):
        rows.append(_row("the dashboard's Streamlit server, at the soak's end", polling["dashboard_rss"]))
    lines = [
        f"### Memory (RSS, MB; `keyrack serve`; pyarrow mapped by the proxy at the soak's end: {p.get('arrow_mapped')})",
        "",
        markdown_table(["process / phase", "RSS", "anon", "file", "shmem", "DuckDB's own"], rows),
        "",
        *(
            [
                f"- dashboard polling (headless Chromium, a page every {polling['dwell_s']:g} s): "
                f"{polling['loads']['monitor']} Monitor and {polling['loads']['trends']} Trends loads, "
                f"{len(polling['failures'])} failed {polling['failures'][:3]}"
            ]
            if polling
            else []
        ),
        *(
            [
                f"- steady with the dashboard attached vs the same proxy alone (same run): {p['steady']['VmRSS']:.0f} / "
                f"{lone['steady']['VmRSS']:.0f} MB = {p['steady']['VmRSS'] / lone['steady']['VmRSS']:.2f}"
            ]
            if lone
            else []
        ),
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
        f"- machine load average (1 min) before / after: {f['load_average'][0]} / {f['load_average'][1]}",
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
    ap.add_argument("--no-dashboard", action="store_true", help="no dashboard attached (the data plane alone)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the same proxy without a dashboard")
    ap.add_argument("--duckdb-baseline", action="store_true", help="also run DuckDB's defaults, no dashboard")
    ap.add_argument("--json", type=Path, default=RESULTS / "memory.json", help="where to write the figures")
    args = ap.parse_args(argv)
    figures = run(args.load, args.soak, not args.no_dashboard, not args.no_baseline, args.duckdb_baseline)
    write_json(args.json, figures)
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
