"""Live API sessions through Keyrack against the fake's Live endpoint directly, in one run.

`--sessions` sessions at a time, each of `--turns` text turns (send a turn, read until its turnComplete), for
`--rounds` rounds, first straight to the fake upstream, then through `keyrack serve` (8 pool keys in 4 projects,
round_robin) on the same fake; the client is the `websockets` library the SDKs use, in this process. Printed: setup
time (connect → setupComplete) and turn time (turn sent → turnComplete) percentiles, turns per second, and each
as a ratio of Keyrack's figure over the direct one from the same run. Then the proxy is stopped and its DuckDB
file counted: one `requests` row per session, the turns and tokens of every session (zero lost).

    python -m bench.live_relay [--sessions 16] [--turns 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from bench.common import (
    CLIENT_TOKEN,
    RESULTS,
    count_rows,
    load_average,
    markdown_table,
    percentile,
    running,
    start_fake,
    start_proxy,
    wait_ready,
    write_json,
)
from proxy_service.demo.scenario import demo_key

MODEL = "gemini-2.0-flash-live-001"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
POOL = [demo_key(f"bench-live-{i:02d}") for i in range(8)]
POOL_KEYS = ",".join(f"p{i // 2 + 1}:{k}" for i, k in enumerate(POOL))


async def _session(url: str, key: str, turns: int, setups: list[float], turn_times: list[float]) -> None:
    t0 = time.perf_counter()
    async with websockets.connect(url, additional_headers={"x-goog-api-key": key}, max_size=None) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
        await ws.recv()
        setups.append((time.perf_counter() - t0) * 1000)
        for i in range(turns):
            turn = {
                "clientContent": {"turns": [{"role": "user", "parts": [{"text": f"turn {i}"}]}], "turnComplete": True}
            }
            t1 = time.perf_counter()
            await ws.send(json.dumps(turn))
            while b'"turnComplete"' not in _bytes(await ws.recv()):
                pass
            turn_times.append((time.perf_counter() - t1) * 1000)


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def measure(url: str, keys: list[str], sessions: int, turns: int, rounds: int) -> dict[str, Any]:
    setups: list[float] = []
    turn_times: list[float] = []

    async def run() -> float:
        t0 = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(
                *(_session(url, keys[i % len(keys)], turns, setups, turn_times) for i in range(sessions))
            )
        return time.perf_counter() - t0

    elapsed = asyncio.run(run())
    setups.sort()
    turn_times.sort()
    return {
        "sessions": len(setups),
        "turns": len(turn_times),
        "turns_per_s": len(turn_times) / elapsed,
        "setup_p50_ms": percentile(setups, 50),
        "setup_p95_ms": percentile(setups, 95),
        "turn_p50_ms": percentile(turn_times, 50),
        "turn_p95_ms": percentile(turn_times, 95),
    }


def run(sessions: int, turns: int, rounds: int, workdir: Path) -> dict[str, Any]:
    fake = start_fake(workdir)  # no scenario: any key is accepted, no limits
    proxy = start_proxy(workdir, fake.url, POOL_KEYS, strategy="round_robin")
    with running(proxy, fake):
        wait_ready([fake, proxy])
        direct = measure(fake.url.replace("http://", "ws://") + PATH, POOL, sessions, turns, rounds)
        through = measure(proxy.url.replace("http://", "ws://") + PATH, [CLIENT_TOKEN], sessions, turns, rounds)
        load = load_average()
    proxy.stop()
    assert proxy.data_dir is not None
    rows = count_rows(
        proxy.data_dir / "keyrack.duckdb",
        "SELECT count(*), count(DISTINCT project), sum(total_tokens), "
        "count(*) FILTER (WHERE error_message LIKE 'live session: " + str(turns) + " turn(s)%') "
        "FROM requests WHERE operation = 'BidiGenerateContent' AND outcome = 'success'",
    )[0]
    return {
        "sessions": sessions,
        "turns": turns,
        "rounds": rounds,
        "load_average": load,
        "direct": direct,
        "keyrack": through,
        "turns_per_s_ratio": through["turns_per_s"] / direct["turns_per_s"],
        "turn_p50_added_ms": through["turn_p50_ms"] - direct["turn_p50_ms"],
        "setup_p50_added_ms": through["setup_p50_ms"] - direct["setup_p50_ms"],
        "events": {
            "sessions_recorded": rows[0],
            "projects": rows[1],
            "tokens": rows[2],
            "sessions_with_every_turn": rows[3],
            "lost": through["sessions"] - rows[0],
        },
    }


def report(f: dict[str, Any]) -> str:
    cols = ["target", "sessions", "turns", "turns_per_s", "setup_p50_ms", "setup_p95_ms", "turn_p50_ms", "turn_p95_ms"]
    table = markdown_table(cols, [[name, *(f[name][c] for c in cols[1:])] for name in ("direct", "keyrack")])
    ev = f["events"]
    return (
        f"{table}\n\nKeyrack / direct turns per second: {f['turns_per_s_ratio']:.2f}; added p50 per turn "
        f"{f['turn_p50_added_ms']:.2f} ms, per setup {f['setup_p50_added_ms']:.2f} ms (load average {f['load_average']}).\n"
        f"Events: {ev['sessions_recorded']} session rows for {f['keyrack']['sessions']} sessions ({ev['lost']} lost), "
        f"{ev['sessions_with_every_turn']} with all {f['turns']} turns, {ev['projects']} projects, {ev['tokens']} tokens."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keyrack-bench-live-") as tmp:
        f = run(args.sessions, args.turns, args.rounds, Path(tmp))
    print(report(f))
    write_json(RESULTS / "live_relay.json", f)


if __name__ == "__main__":
    main()
