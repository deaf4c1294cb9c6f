"""The demo's workflows (demo/resource_use.py) through Keyrack on the fake, with round robin over three projects:
an upload and calls naming the file (and an older one), a cache and its calls, a Live session — each request well
answered and recorded with its resource — and the traffic generator running them now and then beside its calls."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import httpx

from proxy_service.demo.resource_use import Workflows
from proxy_service.demo.traffic import Outcome, TrafficGenerator
from tests.conftest import CLIENT_TOKEN, SCENARIO, Proxy, Upstream, wait_rows

DEADLINE_S = 60.0  # generous: the machine is shared


def run_flows(flows: Workflows, kinds: list[str]) -> list[list[Outcome]]:
    async def go() -> list[list[Outcome]]:
        async with httpx.AsyncClient(base_url=flows.base_url, timeout=30) as client:
            return [await flows(client, random.Random(3), kind) for kind in kinds]

    return asyncio.run(go())


def test_each_workflow_is_answered_and_recorded_with_its_resource(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin")
    flows = Workflows(proxy.url, CLIENT_TOKEN)
    first, second, cached, live = run_flows(flows, ["upload", "upload", "cache", "live"])
    for flow in (first, second, cached, live):
        assert [(o.status, o.problem) for o in flow] == [(200, None)] * len(flow)
    kinds = [o.spec.kind for o in first]
    assert kinds[:2] == ["upload_start", "upload_chunk"] and set(kinds[2:]) == {"file_generate"}
    (_, first_uri), (_, second_uri) = flows.recent
    named = [o.spec.body or b"" for o in second if o.spec.kind == "file_generate"]
    assert first_uri.encode() in named[-1] and all(second_uri.encode() in b for b in named[:-1])  # an older file too
    assert cached[0].spec.kind == "cache_create" and len(cached) >= 3
    # A Live session is recorded when its relay ends, a moment after the client closed it.
    wait_rows(proxy, "SELECT 1 FROM requests WHERE resource_kind = 'live'", timeout=DEADLINE_S)
    rows = proxy.rows(
        "SELECT resource_kind, operation, count(*), count(DISTINCT project) FROM requests WHERE status = 200 "
        "GROUP BY ALL ORDER BY ALL"
    )
    by = {(kind, op): (n, projects) for kind, op, n, projects in rows}
    assert by[("file", "files.upload")][0] == 2 and by[("file", "files.upload.resumable")][0] == 2
    assert by[("file", "generateContent")][0] == len(first) + len(second) - 4
    assert by[("cachedContent", "cachedContents.create")] == (1, 1)
    assert by[("cachedContent", "generateContent")] == (len(cached) - 1, 1)  # all on the cache's project
    assert by[("live", "BidiGenerateContent")][0] == 1


def test_the_traffic_generator_runs_workflows_beside_its_calls(
    start_upstream: Callable[..., Upstream], start_proxy: Callable[..., Proxy]
) -> None:
    upstream = start_upstream(SCENARIO)
    proxy = start_proxy(upstream.url, strategy="round_robin")
    flows = Workflows(proxy.url, CLIENT_TOKEN)
    flows.share = 0.5  # often, so that every kind shows within seconds
    seen: list[Outcome] = []
    traffic = TrafficGenerator(proxy.url, CLIENT_TOKEN, rate=10, seed=4, workflows=flows, on_outcome=seen.append)
    traffic.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not {"upload_chunk", "cache_create", "live"} <= {o.spec.kind for o in seen}:
            assert time.monotonic() < deadline, sorted({o.spec.kind for o in seen})
            time.sleep(0.1)
    finally:
        traffic.stop()
    flow_kinds = {"upload_start", "upload_chunk", "file_generate", "cache_create", "cache_generate", "live"}
    flowed = [o for o in seen if o.spec.kind in flow_kinds]
    assert flowed and all(o.problem is None for o in flowed), [o.problem for o in flowed if o.problem][:3]
    assert len(seen) > len(flowed)  # the plain calls go on beside them
    wait_rows(proxy, "SELECT 1 FROM requests WHERE resource_kind = 'live'", timeout=DEADLINE_S)
    kinds = {k for (k,) in proxy.rows("SELECT DISTINCT resource_kind FROM requests WHERE resource_kind IS NOT NULL")}
    assert kinds >= {"file", "cachedContent", "live"}
