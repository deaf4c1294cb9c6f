"""Clients as tenants (issue 27): what the records cost per call, and who is served when a model is scarce.

    python -m bench.clients [--records 1000] [--minutes 2] [--capacity 60] [--no-scarcity]

1. **Cost per call, in process.** The client path of one call — authenticate the token (HMAC + dict lookup),
   admit it (allow-list, every limit set, the pool's free share for the class), release it with its tokens — on a
   book of `--records` records with every limit set and a real `Pool` of 8 keys, against what the same call cost
   before records (a constant-time comparison with the one configured token, and its `t_…` id). The median over
   repeats of each side's time per call, in µs: on a loaded machine this figure holds far better than an
   end-to-end p50 difference (`bench.proxy_throughput --clients` measures that too).
2. **Scarcity, end to end** (the issue's "done when"): the fake upstream serving `--capacity` calls a minute for one
   model on one project, `keyrack serve` knowing that limit, three clients — interactive, standard, batch — sending
   together 3× the capacity for `--minutes` minutes at a steady pace (1 : 3 : 5 calls); then two standard clients at a
   10:1 demand ratio. Reported: each client's served share, the refusals by reason, the upstream's 429s.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench.common import ADMIN_TOKEN, CLIENT_LIMITS, RESULTS, start_fake, start_proxy, wait_ready, write_json
from proxy_service.clients import CLASSES, Client, ClientBook, new_token
from proxy_service.demo.scenario import demo_key
from proxy_service.keys import KeySpec
from proxy_service.pool import Pool

MODEL = "gemini-2.5-flash"
TARGET_ADDED_US = 100.0  # the 0.1 ms added p50 at c=1


def path_cost(records: int, calls: int = 20_000, repeats: int = 7) -> dict[str, Any]:
    """µs per call of the client path with `records` records against the path before records."""
    pool = Pool("quota_aware", default_cooldown_s=60, failure_threshold=5, limits={})
    pool.add([KeySpec(demo_key(f"bench-key-{i:02d}"), f"p{i // 2 + 1}", None) for i in range(8)])
    reserve = {"interactive": 0.0, "standard": 0.1, "batch": 0.3}
    book = ClientBook(b"k" * 32, pool.free_share, lambda: reserve)
    tokens = []
    for i in range(records):
        token = new_token()
        tokens.append(token)
        book.put(
            Client(
                id=f"c_{i:06d}",
                label=f"bench-{i}",
                token_hash=book.hash(token),
                cls=CLASSES[i % 3],
                limits=CLIENT_LIMITS,
            ),
            recount=False,
        )
    book.replace_all(list(book.by_id.values()))
    token = tokens[-1]
    configured = ["bench-client-token-0123456789"]

    def with_records() -> None:
        for _ in range(calls):
            c = book.find(token)
            assert c is not None and c.active(time.time())
            book.admit(c, MODEL, MODEL)
            book.release(c, 42)

    def before() -> None:
        encoded = configured[0].encode()
        for _ in range(calls):
            ok = False
            for t in configured:
                ok |= hmac.compare_digest(encoded, t.encode())
            assert ok
            "t_" + hashlib.sha256(encoded).hexdigest()[:10]

    times: dict[str, list[float]] = {"records": [], "before": []}
    for _ in range(repeats):
        for name, fn in (("before", before), ("records", with_records)):
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / calls * 1e6)
    rec, old = statistics.median(times["records"]), statistics.median(times["before"])
    return {
        "records": records,
        "us_per_call_records": round(rec, 2),
        "us_per_call_before": round(old, 2),
        "added_us": round(rec - old, 2),
        "min_added_us": round(min(times["records"]) - min(times["before"]), 2),
        "target_added_us": TARGET_ADDED_US,
        "met": rec - old <= TARGET_ADDED_US,
    }


async def _pace(http: httpx.AsyncClient, url: str, token: str, per_s: float, seconds: float, out: Counter[str]) -> None:
    """One call every 1/per_s seconds (each in its own task: a slow answer does not slow the pace)."""
    start = time.monotonic()
    tasks = []
    n = 0
    while (now := time.monotonic() - start) < seconds:
        due = n / per_s
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(_one(http, url, token, out)))
        n += 1
    await asyncio.gather(*tasks)


async def _one(http: httpx.AsyncClient, url: str, token: str, out: Counter[str]) -> None:
    try:
        r = await http.post(url, headers={"x-goog-api-key": token}, json={"contents": [{"parts": [{"text": "hi"}]}]})
    except httpx.HTTPError:
        out["error"] += 1
        return
    if r.status_code == 200:
        out["served"] += 1
    elif r.status_code == 429:
        reason = "upstream"  # Google's own 429, passed through
        for d in r.json().get("error", {}).get("details", []):
            if str(d.get("@type", "")).endswith("ErrorInfo") and d.get("domain") == "keyrack":
                reason = str(d.get("reason", "")).lower()
        out[f"refused_{reason}"] += 1
    else:
        out[f"status_{r.status_code}"] += 1


def _drive(url: str, clients: dict[str, tuple[str, float]], seconds: float) -> dict[str, Counter[str]]:
    out = {name: Counter[str]() for name in clients}
    target = f"{url}/v1beta/models/{MODEL}:generateContent"

    async def main() -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            await asyncio.gather(
                *(_pace(http, target, tok, rate, seconds, out[name]) for name, (tok, rate) in clients.items())
            )

    asyncio.run(main())
    return out


def _make(url: str, label: str, cls: str) -> str:
    r = httpx.post(
        f"{url}/admin/api/clients",
        json={"label": label, "class": cls},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=60,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def scarcity(workdir: Path, capacity: int, minutes: float, reserve: dict[str, float]) -> dict[str, Any]:
    # Each phase on a project of its own: the fake's minute window of the first must not be the second's.
    keys = {phase: [demo_key(f"bench-scarce-{phase}-{i}") for i in range(2)] for phase in ("classes", "fair")}
    fake = start_fake(workdir, {"projects": keys, "limits": {MODEL: {"rpm": capacity}}, "seed": 5})
    import json

    out: dict[str, Any] = {"capacity_per_min": capacity, "minutes": minutes, "priority_reserve": reserve}
    try:
        wait_ready([fake])
        for phase in ("classes", "fair"):
            env = {"KEYRACK_PRIORITY_RESERVE": json.dumps(reserve)}
            proxy = start_proxy(
                workdir,
                fake.url,
                ",".join(f"{phase}:{k}" for k in keys[phase]),
                model_limits=json.dumps({MODEL: {"rpm": capacity}}),
                env=env,
                name=f"scarce-{phase}",
            )
            try:
                wait_ready([proxy])
                before = httpx.get(f"{fake.url}/_fake/stats").json()
                per_s = 3 * capacity / 60  # 3× what the minute serves, all clients together
                if phase == "classes":
                    shares = {"interactive": 1 / 9, "standard": 3 / 9, "batch": 5 / 9}
                    clients = {n: (_make(proxy.url, n, n), per_s * s) for n, s in shares.items()}
                else:
                    clients = {
                        "heavy": (_make(proxy.url, "heavy", "standard"), per_s * 10 / 11),
                        "light": (_make(proxy.url, "light", "standard"), per_s / 11),
                    }
                got = _drive(proxy.url, clients, minutes * 60)
                after = httpx.get(f"{fake.url}/_fake/stats").json()
            finally:
                proxy.stop()
            upstream_429 = sum(after["rate_limited"].values()) - sum(before["rate_limited"].values())
            out[phase] = {
                name: {
                    **dict(c),
                    "sent": sum(c.values()),
                    "served_share": round(c["served"] / max(1, sum(c.values())), 3),
                }
                for name, c in got.items()
            }
            out[phase]["upstream_429"] = upstream_429
    finally:
        fake.stop()
    served = sum(v["served"] for k, v in out["fair"].items() if isinstance(v, dict))
    out["fair"]["light_fair_share_met"] = out["fair"]["light"]["served"] >= min(
        out["fair"]["light"]["sent"], served // 2
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--capacity", type=int, default=60, help="calls per minute the one model serves (default 60)")
    ap.add_argument("--no-scarcity", action="store_true", help="only the in-process cost per call")
    ap.add_argument("--json", type=Path, default=RESULTS / "clients.json")
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {"path": path_cost(args.records)}
    p = figures["path"]
    print(
        f"client path with {p['records']:,} records, every limit set: {p['us_per_call_records']} µs/call vs "
        f"{p['us_per_call_before']} µs before records: added {p['added_us']:+.2f} µs (target <= {TARGET_ADDED_US:g}: "
        f"{'met' if p['met'] else 'MISSED'})"
    )
    if not args.no_scarcity:
        reserve = {"interactive": 0.0, "standard": 0.3, "batch": 0.5}
        with tempfile.TemporaryDirectory(prefix="keyrack-bench-") as tmp:
            figures["scarcity"] = s = scarcity(Path(tmp), args.capacity, args.minutes, reserve)
        for phase in ("classes", "fair"):
            for name, c in s[phase].items():
                if isinstance(c, dict):
                    print(
                        f"{phase:8} {name:12} sent {c['sent']:5}  served {c['served']:5}  ({c['served_share']:.1%})  {c}"
                    )
            print(f"{phase:8} upstream 429s: {s[phase]['upstream_429']}")
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
