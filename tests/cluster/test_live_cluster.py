"""Live sessions through a cluster (real `keyrack serve` replicas, as the image runs them): each replica relays its
sessions with keys chosen by the shared round-robin turn, and every session is one row in the shared lake."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import websockets

from tests.cluster.conftest import Replica
from tests.cluster.test_replicas import lake_rows, until
from tests.conftest import CLIENT_TOKEN, SCENARIO, Upstream

MODEL = "gemini-2.0-flash-live-001"
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


async def session(replica: Replica, turns: int) -> int:
    """A session of `turns` turns through `replica`; the tokens its usageMetadata messages add up to."""
    total = 0
    url = replica.url.replace("http://", "ws://") + PATH
    async with websockets.connect(url, additional_headers={"x-goog-api-key": CLIENT_TOKEN}) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        for i in range(turns):
            content = {"turns": [{"role": "user", "parts": [{"text": f"turn {i}"}]}], "turnComplete": True}
            await ws.send(json.dumps({"clientContent": content}))
            while True:
                msg = json.loads(await ws.recv())
                total += msg.get("usageMetadata", {}).get("totalTokenCount", 0)
                if msg.get("serverContent", {}).get("turnComplete"):
                    break
    return total


def test_live_sessions_through_three_replicas_rotate_and_land_in_the_lake(
    start_upstream: Callable[..., Upstream], start_replica: Callable[..., Replica]
) -> None:
    up = start_upstream(SCENARIO)
    replicas = [start_replica(up.url, strategy="round_robin") for _ in range(3)]

    async def run() -> list[int]:
        return [await session(r, 3) for r in replicas for _ in range(2)]

    totals = asyncio.run(run())
    sql = (
        "SELECT replica, project, total_tokens, error_status FROM requests "
        "WHERE operation = 'BidiGenerateContent' ORDER BY ts"
    )
    until(lambda: len(lake_rows(replicas[0], sql)) == 6, timeout=60)
    rows = lake_rows(replicas[2], sql)  # any replica reads every replica's sessions
    assert sorted(r[0] for r in rows) == ["r1", "r1", "r2", "r2", "r3", "r3"]
    assert [r[2] for r in rows] == totals and all(r[3] == "LIVE_CLIENT_CLOSED" for r in rows)
    assert len({r[1] for r in rows}) >= 2  # the cluster-wide rotation spread the sessions over projects
    assert up.stats()["by_operation"]["BidiGenerateContent"] == 6
