"""SIGTERM in the middle of load: `keyrack serve` stops accepting, lets in-flight calls (slow, paced streams
included) finish, flushes every event and exits 0. Then the DuckDB file holds exactly one request row per answer
the clients received: zero lost."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path

import httpx

from proxy_service.demo.traffic import Outcome, make_request, send
from tests.conftest import fake_key
from tests.reliability.harness import fake_upstream, query, start_proxy

TOKEN = "sigterm-client-token-91c2"
MIX = {"stream_sse": 4, "stream_json": 2, "chat_stream": 2, "generate": 2, "count": 1}
POOL = ",".join(map(fake_key, ("k1", "k2", "k3")))
SCENARIO = {"latency_ms": 20, "ttft_ms": 300, "tokens_per_s": 25, "seed": 5}  # streams last ~1-4 s


def complete(o: Outcome) -> bool:
    """A 200 stream that ended the way the upstream ends it (not cut off by the shutdown)."""
    body = (o.body or b"").decode()
    if o.spec.kind == "stream_json":
        return isinstance(json.loads(body), list) and '"finishReason"' in body
    if o.spec.kind == "stream_sse":
        return '"finishReason"' in body
    if o.spec.kind == "chat_stream":
        return body.rstrip().endswith("data: [DONE]")
    return True


async def load(url: str, proc_signal: float, stop_at: float, workers: int = 10) -> list[Outcome]:
    outcomes: list[Outcome] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker(n: int) -> None:
            rng = random.Random(n)
            while time.monotonic() < stop_at:
                o = await send(client, make_request(rng, TOKEN, mix=MIX), keep_body=True)
                outcomes.append(o)
                if o.status is None and o.started > proc_signal:
                    await asyncio.sleep(0.05)  # the proxy is gone; keep knocking until the end

        await asyncio.gather(*(worker(n) for n in range(workers)))
    return outcomes


def test_sigterm_under_load_finishes_in_flight_calls_and_loses_nothing(tmp_path: Path) -> None:
    with fake_upstream(tmp_path, SCENARIO) as (_up, upstream_url):
        proc, url = start_proxy(tmp_path, upstream_url=upstream_url, access_tokens=TOKEN, api_keys=POOL)
        t0 = time.monotonic()
        sigterm_at = t0 + 2.5

        async def scenario() -> list[Outcome]:
            async def terminate() -> None:
                await asyncio.sleep(sigterm_at - time.monotonic())
                proc.proc.send_signal(signal.SIGTERM)

            task = asyncio.create_task(terminate())
            outcomes = await load(url, sigterm_at, t0 + 6.0)
            await task
            return outcomes

        try:
            outcomes = asyncio.run(scenario())
            code = proc.proc.wait(30)
            exited_after = time.monotonic() - sigterm_at
        finally:
            proc.kill()
    assert code == 0, proc.log()[-3000:]
    assert exited_after < 15

    before = [o for o in outcomes if o.started < sigterm_at - 0.2]
    in_flight = [o for o in before if o.started + o.latency_s > sigterm_at + 0.2]
    assert len(in_flight) >= 5, "SIGTERM should land while calls are in flight"
    assert any(o.spec.stream for o in in_flight)
    broken = [(o.spec.kind, o.status, o.problem) for o in before if o.status is None or o.problem]
    assert not broken, f"requests sent before SIGTERM must get a whole answer: {broken[:5]}"
    assert all(o.status == 200 and complete(o) for o in in_flight), "in-flight calls finish normally"
    refused_after = [o for o in outcomes if o.status is None]
    assert refused_after and all(o.started > sigterm_at - 0.2 for o in refused_after)

    answered = [o for o in outcomes if o.status is not None]
    rows = query(tmp_path / "data" / "keyrack.duckdb", "SELECT request_id FROM requests")
    assert len(rows) == len(answered), f"{len(rows)} rows for {len(answered)} answers"
    assert {r[0] for r in rows} == {o.request_id for o in answered}
    log = proc.log()
    assert f"flushed_requests={len(answered)} " in log and "unwritten=0" in log
