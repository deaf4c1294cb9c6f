"""`Background`: periodic jobs keep going through failures, one-off tasks leave the group when done, and `stop`
cancels every task at once and refuses new ones."""

from __future__ import annotations

import asyncio

import pytest

from proxy_service.background import Background
from proxy_service.errors import NotReady

DEADLINE_S = 30.0  # generous: the machine is shared; the waits end as soon as the condition holds


async def until(condition: object, what: str) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_a_periodic_job_runs_again_after_failures_and_skips() -> None:
    async def scenario() -> None:
        jobs = Background()
        runs: list[str] = []

        def job() -> None:
            runs.append("run")
            if len(runs) == 1:
                raise RuntimeError("boom")  # logged; the loop goes on
            if len(runs) == 2:
                raise NotReady("not yet")  # said once; retried

        jobs.every(lambda: 0.01, job, "test-job", at_start=True)
        await until(lambda: len(runs) >= 4, "four runs")
        assert jobs.names == ["test-job"]
        await jobs.stop()

    asyncio.run(scenario())


def test_stop_cancels_every_task_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        jobs = Background()
        cancelled: list[str] = []

        async def forever(name: str) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        async def once() -> None:
            return None

        jobs.spawn(forever("a"), "a")
        jobs.spawn(forever("b"), "b")
        done = jobs.spawn(once(), "once")
        jobs.every(lambda: 3600.0, lambda: None, "hourly")
        await until(done.done, "the one-off task")
        await until(lambda: "once" not in jobs.names, "the finished task to leave the group")
        assert jobs.names == ["a", "b", "hourly"]

        await jobs.stop()
        assert sorted(cancelled) == ["a", "b"] and jobs.names == []
        with pytest.raises(RuntimeError, match="after shutdown"):
            jobs.spawn(forever("late"), "late")

    asyncio.run(scenario())
