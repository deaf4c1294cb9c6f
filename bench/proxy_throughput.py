"""Proxy throughput and added latency.

One run, every figure from the same machine state: the fake upstream (zero latency, no limits) measured directly,
then through `keyrack serve` (8 pool keys, quota_aware, no model limits), each at c=1 and c=32 for `--duration`
seconds with a closed-loop aiohttp client in this process (the servers are subprocesses). Then the proxy is
stopped with SIGTERM and its DuckDB file is counted: every response the client received must have its
`requests` row (zero lost events). Then the same proxy on granian instead of uvicorn (the ASGI-server comparison:
granian would be adopted only if >= 15 % faster at c=32), and optionally on plain httpx instead of the aiohttp
transport.

    python -m bench.proxy_throughput [--duration 10] [--warmup 2] [--no-transport] [--no-granian]
        [--against DIR [--rounds 5]] [--clients 1000 [--rounds 5]]

`--against DIR` compares with another Keyrack checkout that has its own `.venv` (e.g. `git worktree add
/tmp/oldmain <commit> && make -C /tmp/oldmain install`): both proxies run on the same fake upstream. In each round
both are loaded at c=32 at the same time (each its own closed loop, one client event loop), so a load spike from
elsewhere on the machine lands on both alike: the ratio is this checkout's answers over the other's, over the rounds.
Each round also measures each proxy alone (alternating which goes first), with the proxies' CPU time per answer.

`--clients N` measures what client records cost (issue 27): two proxies of this checkout on the same fake upstream,
one with only the bench's token, one with N client records made through the admin API with every limit set (none
reached), loaded with one of those records' tokens. Each round loads both at c=32 at once (the ratio) and each alone
at c=1 (alternating which goes first): the added p50 is the median over the rounds of the records side's p50 minus
the other's.

Targets (2 cores): >= 700 req/s through the proxy at c=32; <= 3 ms added p50 at c=1; against the previous main,
a ratio >= 0.95; with N client records against none, a ratio >= 0.95 and <= 0.1 ms added p50 at c=1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    ADMIN_TOKEN,
    CLIENT_LIMITS,
    CLIENT_TOKEN,
    GENERATE_BODY,
    HOST,
    NO_LIMITS,
    RESULTS,
    LoadResult,
    Server,
    _spawn,
    closed_loop,
    count_rows,
    free_port,
    generate_path,
    http_json,
    load_average,
    markdown_table,
    side_by_side,
    start_fake,
    start_proxy,
    wait_ready,
    write_json,
)
from proxy_service.demo.scenario import demo_key

TARGET_RPS = 700.0
TARGET_ADDED_P50_MS = 3.0
TARGET_AGAINST_RATIO = 0.95
TARGET_CLIENTS_RATIO = 0.95
TARGET_CLIENTS_ADDED_P50_MS = 0.1
POOL_KEYS = ",".join(f"p{i // 2 + 1}:{demo_key(f'bench-key-{i:02d}')}" for i in range(8))  # 8 keys in 4 projects


def _measure(server_url: str, label: str, concurrency: int, duration: float) -> LoadResult:
    result = closed_loop(server_url + generate_path(), concurrency=concurrency, duration=duration)
    result.target = label
    return result


def _proxy_phase(
    workdir: Path, fake: Server, name: str, duration: float, warmup: float, levels: tuple[int, ...], module: str
) -> tuple[dict[int, LoadResult], dict[str, Any]]:
    """Start a proxy, warm it up, measure each concurrency level, stop it and count its events."""
    proxy = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, name=name, module=module)
    received = 0
    try:
        wait_ready([proxy])
        results: dict[int, LoadResult] = {}
        if warmup > 0:
            w = _measure(proxy.url, f"{name} warm-up", 8, warmup)
            received += w.responses
        for c in levels:
            r = results[c] = _measure(proxy.url, name, c, duration)
            received += r.responses
    finally:
        rc = proxy.stop()
    assert proxy.data_dir is not None
    ((requests, attempts, successes),) = count_rows(
        proxy.data_dir / "keyrack.duckdb",
        "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM attempts), "
        "(SELECT count(*) FROM requests WHERE outcome = 'success')",
    )
    events = {
        "responses_received": received,
        "requests_rows": requests,
        "attempts_rows": attempts,
        "success_rows": successes,
        "lost": received - requests,
        "exit_code": rc,
    }
    return results, events


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _against_phase(
    workdir: Path, fake: Server, against: Path, duration: float, warmup: float, rounds: int
) -> dict[str, Any]:
    """This checkout's proxy and `against`'s at c=32: in each round both at once (the ratio), then each alone."""
    this = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, name="this-proxy")
    that = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, name="against-proxy", checkout=against)
    runs: dict[str, list[LoadResult]] = {"this": [], "against": []}
    together: list[list[LoadResult]] = []
    cpu = {"this": 0.0, "against": 0.0}
    try:
        wait_ready([this, that])
        if warmup > 0:
            _measure(this.url, "warm-up", 8, warmup)
            _measure(that.url, "warm-up", 8, warmup)
        for n in range(rounds):
            pair = [("this", this), ("against", that)]
            for side, server in pair if n % 2 == 0 else pair[::-1]:  # neither side always goes first
                before = _cpu_s(server.proc.pid)
                runs[side].append(_measure(server.url, f"{side} round {n + 1}", 32, duration))
                cpu[side] += _cpu_s(server.proc.pid) - before
            urls = [this.url + generate_path(), that.url + generate_path()]
            together.append(side_by_side(urls, concurrency=32, duration=duration))
    finally:
        this.stop()
        that.stop()
    this_rps = sum(r.ok for r in runs["this"]) / sum(r.elapsed_s for r in runs["this"])
    that_rps = sum(r.ok for r in runs["against"]) / sum(r.elapsed_s for r in runs["against"])
    # The ratio is the median of the rounds' ratios: a load spike from elsewhere on the machine lands in one round of
    # one side and would move a ratio of totals; the median of pairs measured back to back does not follow it.
    pairs = sorted(a.rps / b.rps for a, b in zip(runs["this"], runs["against"], strict=True) if b.rps)
    median = (pairs[len(pairs) // 2] + pairs[(len(pairs) - 1) // 2]) / 2 if pairs else 0.0
    paired = sorted(a.rps / b.rps for a, b in together if b.rps)
    at_once = sum(a.ok for a, _ in together) / max(1, sum(b.ok for _, b in together))
    # CPU time per answered call: what each proxy costs, which a busy machine moves far less than req/s.
    this_ok, that_ok = sum(r.ok for r in runs["this"]), sum(r.ok for r in runs["against"])
    this_cpu_ms = 1000 * cpu["this"] / this_ok if this_ok else 0.0
    that_cpu_ms = 1000 * cpu["against"] / that_ok if that_ok else 0.0
    return {
        "against": str(against),
        "rounds": rounds,
        "this_rps_c32": round(this_rps, 1),
        "against_rps_c32": round(that_rps, 1),
        "ratio_c32": round(at_once, 3),
        "ratio_side_by_side_rounds": [round(r, 3) for r in paired],
        "ratio_alternating_median_c32": round(median, 3),
        "ratio_of_totals_c32": round(this_rps / that_rps, 3) if that_rps else 0.0,
        "cpu_ms_per_call": [round(this_cpu_ms, 3), round(that_cpu_ms, 3)],
        "cpu_ratio": round(that_cpu_ms / this_cpu_ms, 3) if this_cpu_ms else 0.0,
        "per_round": [[round(a.rps, 1), round(b.rps, 1)] for a, b in zip(runs["this"], runs["against"], strict=True)],
        "errors": [sum(r.errors for r in runs["this"]), sum(r.errors for r in runs["against"])],
    }


def make_clients(url: str, n: int) -> str:
    """`n` client records through the admin API, every limit set; the last one's token."""
    import httpx

    token = ""
    classes = ("interactive", "standard", "batch")
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=60) as http:
        for i in range(n):
            body = {"label": f"bench-{i:05d}", "class": classes[i % 3], "limits": CLIENT_LIMITS}
            r = http.post("/admin/api/clients", json=body)
            r.raise_for_status()
            token = r.json()["token"]
    return token


def _clients_phase(workdir: Path, fake: Server, n: int, duration: float, warmup: float, rounds: int) -> dict[str, Any]:
    """A proxy with `n` client records (loaded with one's token) against one with none, side by side."""
    plain = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, name="no-records-proxy")
    records = start_proxy(workdir, fake.url, POOL_KEYS, model_limits=NO_LIMITS, name="records-proxy")
    together: list[list[LoadResult]] = []
    p50: dict[str, list[float]] = {"plain": [], "records": []}
    try:
        wait_ready([plain, records])
        token = make_clients(records.url, n)
        tokens = [CLIENT_TOKEN, token]
        urls = [plain.url + generate_path(), records.url + generate_path()]
        if warmup > 0:
            side_by_side(urls, concurrency=8, duration=warmup, tokens=tokens)
        for i in range(rounds):
            together.append(side_by_side(urls, concurrency=32, duration=duration, tokens=tokens))
            order = [("plain", plain, CLIENT_TOKEN), ("records", records, token)]
            for side, server, tok in order if i % 2 == 0 else order[::-1]:
                r = closed_loop(
                    server.url + generate_path(), concurrency=1, duration=duration, headers={"x-goog-api-key": tok}
                )
                p50[side].append(r.pct(50))
    finally:
        plain.stop()
        records.stop()
    ratios = sorted(b.rps / a.rps for a, b in together if a.rps)
    added = sorted(r - p for p, r in zip(p50["plain"], p50["records"], strict=True))
    return {
        "records": n,
        "rounds": rounds,
        "ratio_c32": round(sum(b.ok for _, b in together) / max(1, sum(a.ok for a, _ in together)), 3),
        "ratio_rounds": [round(r, 3) for r in ratios],
        "rps_c32": [
            round(sum(a.ok for a, _ in together) / sum(a.elapsed_s for a, _ in together), 1),
            round(sum(b.ok for _, b in together) / sum(b.elapsed_s for _, b in together), 1),
        ],
        "p50_ms_c1": [[round(x, 3) for x in p50["plain"]], [round(x, 3) for x in p50["records"]]],
        "added_p50_ms_c1": round(added[len(added) // 2], 3) if added else 0.0,
        "errors": [sum(a.errors for a, _ in together), sum(b.errors for _, b in together)],
    }


def _minimal_phase(workdir: Path, fake: Server, duration: float, warmup: float) -> LoadResult:
    """The calibration row: bench/_minimal_proxy.py (same stack, no Keyrack logic) at c=32."""
    port = free_port()
    args = [sys.executable, "-m", "bench._minimal_proxy", "--port", str(port), "--upstream", fake.url]
    minimal = _spawn("minimal-proxy", args, workdir, {}, f"http://{HOST}:{port}")
    try:
        wait_ready([minimal])
        if warmup > 0:
            _measure(minimal.url, "minimal warm-up", 8, warmup)
        return _measure(minimal.url, "minimal Starlette proxy (calibration)", 32, duration)
    finally:
        minimal.stop()


def run(
    duration: float = 10.0,
    warmup: float = 2.0,
    transport: bool = True,
    minimal: bool = True,
    workdir: Path | None = None,
    granian: bool = True,
    against: Path | None = None,
    rounds: int = 5,
    clients: int = 0,
) -> dict[str, Any]:
    """Run every phase; returns the figures (see `report`)."""
    load_before = load_average()
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="keyrack-bench-")
        workdir = Path(own_tmp.name)
    fake = start_fake(workdir)
    try:
        wait_ready([fake])
        direct: dict[int, LoadResult] = {}
        if warmup > 0:
            _measure(fake.url, "direct warm-up", 8, warmup)
        for c in (1, 32):
            direct[c] = _measure(fake.url, "direct", c, duration)
        proxied, events = _proxy_phase(workdir, fake, "proxy", duration, warmup, (1, 32), "proxy_service.cli")
        on_granian: dict[int, LoadResult] = {}
        granian_events: dict[str, Any] = {}
        if granian:
            on_granian, granian_events = _proxy_phase(
                workdir, fake, "proxy on granian", duration, warmup, (1, 32), "bench._granian_proxy"
            )
        calibration = _minimal_phase(workdir, fake, duration, warmup) if minimal else None
        plain: dict[int, LoadResult] = {}
        if transport:
            plain, _ = _proxy_phase(
                workdir, fake, "proxy-plain-httpx", duration, warmup, (32,), "bench._plain_httpx_proxy"
            )
        compared = _against_phase(workdir, fake, against, duration, warmup, rounds) if against is not None else None
        with_clients = _clients_phase(workdir, fake, clients, duration, warmup, rounds) if clients > 0 else None
        fake_stats = http_json(fake.url + "/_fake/stats")
    finally:
        fake.stop()
        if own_tmp is not None:
            own_tmp.cleanup()

    extra = [calibration] if calibration is not None else []
    rows = [
        r.summary()
        for r in (direct[1], direct[32], proxied[1], proxied[32], *on_granian.values(), *extra, *plain.values())
    ]
    d1, d32, p1, p32 = direct[1], direct[32], proxied[1], proxied[32]
    figures: dict[str, Any] = {
        "duration_s": duration,
        "load_average": [load_before, load_average()],
        "body_bytes": len(GENERATE_BODY),
        "rows": rows,
        "proxy_rps_c32": round(p32.rps, 1),
        "proxy_rps_c1": round(p1.rps, 1),
        "direct_rps_c32": round(d32.rps, 1),
        "throughput_ratio_c32": round(p32.rps / d32.rps, 3) if d32.rps else 0.0,
        "throughput_ratio_c1": round(p1.rps / d1.rps, 3) if d1.rps else 0.0,
        "added_p50_ms_c1": round(p1.pct(50) - d1.pct(50), 3),
        "added_p99_ms_c1": round(p1.pct(99) - d1.pct(99), 3),
        "events": events,
        "fake_requests": fake_stats.get("requests"),
        "targets": {
            "proxy_rps_c32": {"target": f">= {TARGET_RPS:g}", "met": p32.rps >= TARGET_RPS},
            "added_p50_ms_c1": {
                "target": f"<= {TARGET_ADDED_P50_MS:g}",
                "met": p1.pct(50) - d1.pct(50) <= TARGET_ADDED_P50_MS,
            },
            "lost_events": {"target": "== 0", "met": events["lost"] == 0},
        },
    }
    if calibration is not None:
        figures["minimal_rps_c32"] = round(calibration.rps, 1)
        figures["keyrack_vs_minimal_c32"] = round(p32.rps / calibration.rps, 3) if calibration.rps else 0.0
    if on_granian:
        g32 = on_granian[32].rps
        figures["granian_rps_c32"] = round(g32, 1)
        figures["granian_rps_c1"] = round(on_granian[1].rps, 1)
        figures["granian_vs_uvicorn_c32"] = round(g32 / p32.rps, 3) if p32.rps else 0.0
        figures["granian_events"] = granian_events
    if compared is not None:
        figures["against"] = compared
        figures["targets"]["against_ratio_c32"] = {
            "target": f">= {TARGET_AGAINST_RATIO:g}",
            "met": compared["ratio_c32"] >= TARGET_AGAINST_RATIO,
        }
    if with_clients is not None:
        figures["clients"] = with_clients
        figures["targets"]["clients_ratio_c32"] = {
            "target": f">= {TARGET_CLIENTS_RATIO:g}",
            "met": with_clients["ratio_c32"] >= TARGET_CLIENTS_RATIO,
        }
        figures["targets"]["clients_added_p50_ms_c1"] = {
            "target": f"<= {TARGET_CLIENTS_ADDED_P50_MS:g}",
            "met": with_clients["added_p50_ms_c1"] <= TARGET_CLIENTS_ADDED_P50_MS,
        }
    if plain:
        figures["plain_httpx_rps_c32"] = round(plain[32].rps, 1)
        figures["aiohttp_vs_plain_c32"] = round(p32.rps / plain[32].rps, 2) if plain[32].rps else 0.0
    return figures


def report(f: dict[str, Any]) -> str:
    head = ["target", "c", "requests", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms"]
    table = markdown_table(
        head,
        [
            [r["target"], r["concurrency"], r["requests"], r["errors"], r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"]]
            for r in f["rows"]
        ],
    )
    ev = f["events"]
    lines = [
        f"### Proxy throughput ({f['duration_s']:g} s per row, generateContent, {f['body_bytes']} B body)",
        "",
        table,
        "",
        f"- machine load average (1 min) before / after: {f['load_average'][0]} / {f['load_average'][1]} on 2 cores "
        "(figures from a loaded machine understate every row; the ratios hold better)",
        f"- proxy/direct throughput: c=1 {f['throughput_ratio_c1']:.2f}, c=32 {f['throughput_ratio_c32']:.2f}",
        f"- added latency at c=1: p50 {f['added_p50_ms_c1']:+.3f} ms, p99 {f['added_p99_ms_c1']:+.3f} ms",
        f"- events: {ev['responses_received']} responses received, {ev['requests_rows']} requests rows, "
        f"{ev['attempts_rows']} attempts rows, lost {ev['lost']} (proxy exit code {ev['exit_code']})",
    ]
    if "minimal_rps_c32" in f:
        lines.append(
            f"- calibration: a minimal Starlette proxy on the same stack (no pool, events or auth) did "
            f"{f['minimal_rps_c32']:,.0f} req/s at c=32; Keyrack/minimal = {f['keyrack_vs_minimal_c32']:.2f}"
        )
    if "granian_rps_c32" in f:
        ge = f["granian_events"]
        lines.append(
            f"- ASGI server at c=32: granian {f['granian_rps_c32']:,.0f} req/s vs uvicorn {f['proxy_rps_c32']:,.0f} "
            f"req/s (granian/uvicorn {f['granian_vs_uvicorn_c32']:.2f}; adopted only at >= 1.15); granian lost "
            f"{ge['lost']} events (exit code {ge['exit_code']})"
        )
    if "plain_httpx_rps_c32" in f:
        lines.append(
            f"- upstream transport at c=32: aiohttp {f['proxy_rps_c32']:,.0f} req/s vs plain httpx "
            f"{f['plain_httpx_rps_c32']:,.0f} req/s ({f['aiohttp_vs_plain_c32']:.2f}x)"
        )
    if "against" in f:
        a = f["against"]
        rounds = ", ".join(f"{x:,.0f}/{y:,.0f}" for x, y in a["per_round"])
        lines.append(
            f"- against {a['against']} at c=32, side by side ({a['rounds']} rounds, both proxies loaded at once): ratio "
            f"(this / against) {a['ratio_c32']:.3f} (rounds: {', '.join(map(str, a['ratio_side_by_side_rounds']))})"
        )
        lines.append(
            f"- against, alternating rounds: this {a['this_rps_c32']:,.0f} "
            f"req/s vs {a['against_rps_c32']:,.0f} req/s; ratio (median of the rounds) "
            f"{a['ratio_alternating_median_c32']:.3f}, of the totals {a['ratio_of_totals_c32']:.3f} (per round this/against: {rounds}; "
            f"errors {a['errors'][0]}/{a['errors'][1]}); proxy CPU per answered call this {a['cpu_ms_per_call'][0]:.3f} "
            f"ms vs {a['cpu_ms_per_call'][1]:.3f} ms (against / this {a['cpu_ratio']:.3f}: above 1 = this is cheaper)"
        )
    if "clients" in f:
        c = f["clients"]
        lines.append(
            f"- {c['records']:,} client records with every limit set vs none ({c['rounds']} rounds): c=32 side by "
            f"side {c['rps_c32'][1]:,.0f} vs {c['rps_c32'][0]:,.0f} req/s, ratio {c['ratio_c32']:.3f} (rounds: "
            f"{', '.join(map(str, c['ratio_rounds']))}); added p50 at c=1 {c['added_p50_ms_c1']:+.3f} ms (median of "
            f"the rounds; errors {c['errors'][0]}/{c['errors'][1]})"
        )
    for name, t in f["targets"].items():
        lines.append(f"- target {name} {t['target']}: {'met' if t['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured row (default 10)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds before each target (default 2)")
    ap.add_argument("--no-transport", action="store_true", help="skip the plain-httpx transport comparison")
    ap.add_argument("--no-minimal", action="store_true", help="skip the minimal-proxy calibration row")
    ap.add_argument("--no-granian", action="store_true", help="skip the granian-vs-uvicorn comparison")
    ap.add_argument(
        "--against", type=Path, default=None, help="another Keyrack checkout (with its .venv) to compare with at c=32"
    )
    ap.add_argument("--rounds", type=int, default=5, help="rounds per side with --against and --clients")
    ap.add_argument("--clients", type=int, default=0, help="also compare N client records (with limits) against none")
    ap.add_argument("--json", type=Path, default=RESULTS / "proxy_throughput.json", help="where to write the figures")
    args = ap.parse_args(argv)
    figures = run(
        args.duration,
        args.warmup,
        transport=not args.no_transport,
        minimal=not args.no_minimal,
        granian=not args.no_granian,
        against=args.against,
        rounds=args.rounds,
        clients=args.clients,
    )
    print(report(figures))
    write_json(args.json, figures)
    return 0 if figures["events"]["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
