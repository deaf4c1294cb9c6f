"""A start that is quiet and true (issue 25): no ERROR and no traceback while background jobs wait for what they need
(the demand forecast waits for the rollup rebuild instead of failing), and nothing rebuilt on a restart of data
that was already up to date (the rollup folds its last rows at shutdown, so its totals agree with `requests`).

Real processes, a real DuckDB file; waits on conditions with generous deadlines (the machine may be loaded)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from pathlib import Path

import pytest

from proxy_service.background import NOT_READY_RETRY_S
from proxy_service.demo.scenario import demo_pool
from proxy_service.errors import NotReady
from tests.conftest import Proxy
from tests.reliability.harness import (
    Proc,
    clean_env,
    closed_loop,
    fake_upstream,
    free_port,
    start,
    start_proxy,
    wait_http,
)

pytestmark = pytest.mark.timeout(1800)  # two demo starts, a history rebuild and two forecast fits at load 20
LOUD = re.compile(r"level=(ERROR|CRITICAL)|Traceback")
REBUILD = "rollup rebuild started"
SLOW = 900.0  # a rebuild of the demo's history and a first forecast fit take minutes at load 20


def _demo(tmp: Path, name: str, ports: tuple[int, int]) -> tuple[Proc, str]:
    args = ["demo", "--no-dashboard", "--proxy-port", str(ports[0]), "--upstream-port", str(ports[1])]
    args += ["--data-dir", str(tmp / "data"), "--rate", "0.05"]  # a small history: the test stays minutes long
    launcher = start(args, clean_env(), tmp / f"{name}.out", cwd=tmp)
    url = f"http://127.0.0.1:{ports[0]}"
    wait_http(f"{url}/readyz", launcher, timeout=SLOW)
    return launcher, url


def _loud(text: str) -> list[str]:
    return [line[:300] for line in text.splitlines() if LOUD.search(line)]


def test_demo_start_waits_quietly_and_a_restart_rebuilds_nothing(tmp_path: Path) -> None:
    ports = (free_port(), free_port())
    first, _url = _demo(tmp_path, "first", ports)
    try:
        # The first start folds the history in the background; the forecast waits for it (one INFO line), then fits.
        first.wait_for("rollup rebuilt in", timeout=SLOW)
        first.wait_for("demand forecasts refreshed", timeout=SLOW)
    finally:
        assert first.stop(signal.SIGINT, timeout=120) == 0
    out = first.log()
    assert "demo history:" in out and REBUILD in out
    assert len(re.findall("forecast-refresh waits", out)) <= 1, out[-3000:]
    assert not _loud(out), _loud(out)

    second, _url = _demo(tmp_path, "second", ports)
    try:
        second.wait_for("demand forecasts refreshed", timeout=SLOW)
    finally:
        assert second.stop(signal.SIGINT, timeout=120) == 0
    out = second.log()
    assert "demo history:" not in out  # written once
    assert REBUILD not in out and "forecast-refresh waits" not in out, out[-3000:]
    assert not _loud(out), _loud(out)
    for log in (tmp_path / "data" / "demo" / "logs").glob("*.log"):
        assert not _loud(log.read_text(errors="replace")), (log.name, _loud(log.read_text(errors="replace")))


def test_serve_restart_after_traffic_rebuilds_nothing(tmp_path: Path) -> None:
    """Not only the demo: a proxy stopped right after a burst of calls (rows appended since the last fold) starts
    again without rebuilding, and twice in a row."""
    api_keys, scenario = demo_pool()
    scenario = {**scenario, "limits": {}, "error_rates": {}, "invalid_keys": []}
    with fake_upstream(tmp_path, scenario) as (_up, upstream):
        keys = ",".join(k for k in api_keys.split(",") if not k.startswith("legacy:"))
        settings = {"api_keys": keys, "upstream_url": upstream, "access_tokens": "krc_quiet_test_token"}
        for run in range(3):
            proc, url = start_proxy(tmp_path, **settings)  # the same data directory each time
            try:
                outcomes = asyncio.run(closed_loop(url, "krc_quiet_test_token", 1.5, workers=4, min_requests=20))
                assert len(outcomes) >= 20
            finally:
                assert proc.stop(signal.SIGTERM, timeout=90) == 0
            out = proc.log()
            assert "event=shutdown" in out and not _loud(out), _loud(out)
            if run:  # the first start builds the (empty) rollup; later ones find it in step with `requests`
                assert REBUILD not in out, out[-3000:]


def test_a_job_waiting_for_a_prerequisite_is_quiet_and_retried_soon(
    proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The class, not only the forecast: any background job raising NotReady is said once at INFO and run again
    within NOT_READY_RETRY_S whatever its own interval; a job that really fails still logs its traceback."""
    gw = proxy.gateway
    runs: list[float] = []

    def waiting() -> None:
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise NotReady("the thing it needs is being built")

    def broken() -> None:
        raise RuntimeError("really broken")

    async def schedule() -> None:
        gw.jobs.every(lambda: 3600.0, waiting, "test-waiting", at_start=True)
        gw.jobs.every(lambda: 3600.0, broken, "test-broken", at_start=True)

    caplog.set_level(logging.INFO, logger="keyrack")
    asyncio.run_coroutine_threadsafe(schedule(), gw.loop).result(10)
    deadline = time.monotonic() + 60
    while len(runs) < 3:
        assert time.monotonic() < deadline, f"the job was not retried soon: {len(runs)} run(s)"
        time.sleep(0.1)
    assert runs[2] - runs[0] < 3 * NOT_READY_RETRY_S + 5  # not the job's hour
    mine = [r for r in caplog.records if "test-waiting" in r.getMessage()]
    assert [r.levelno for r in mine] == [logging.INFO], [r.getMessage() for r in mine]
    assert "being built" in mine[0].getMessage() and mine[0].exc_info is None
    failed = [r for r in caplog.records if "test-broken" in r.getMessage()]
    assert failed and failed[0].levelno == logging.ERROR and failed[0].exc_info is not None
