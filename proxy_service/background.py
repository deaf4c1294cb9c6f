"""`Background`: the one owner of the proxy process's background loops and fire-and-forget tasks (the gateway's jobs,
the cluster node's heartbeat / bus / reload loops and broadcasts, the alert evaluator), so that shutdown cancels one
list and nothing keeps running after it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from proxy_service.errors import NotReady
from proxy_service.store import StorageFault

log = logging.getLogger("keyrack")
NOT_READY_RETRY_S = 5.0  # a job skipped for a prerequisite (errors.NotReady) runs again this soon


class Background:
    """A small task group: `every` for periodic jobs, `spawn` for a loop or a one-off task; `stop` cancels them all."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` on the running loop until it ends or `stop()`; a finished task leaves the group by itself."""
        if self._stopped:  # shutting down: nothing new starts (the coroutine is closed, not left unawaited)
            coro.close()
            raise RuntimeError(f"background task {name} started after shutdown")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def every(
        self,
        seconds: Callable[[], float],
        job: Callable[[], Awaitable[None] | None],
        name: str,
        *,
        at_start: bool = False,
    ) -> asyncio.Task[Any]:
        """Run `job` every `seconds()` (read again before each wait: a setting may change it). A failed run is logged
        and the loop goes on; a run skipped for a prerequisite (NotReady) is said once and retried sooner."""

        async def loop() -> None:
            first = at_start
            waiting: str | None = None  # why the last run was skipped (said once, not at every retry)
            while True:
                if not first:
                    await asyncio.sleep(min(seconds(), NOT_READY_RETRY_S) if waiting else seconds())
                first = False
                try:
                    result = job()
                    if asyncio.iscoroutine(result):
                        await result
                    waiting = None
                except NotReady as exc:
                    if waiting is None:
                        log.info("background job %s waits: %s", name, exc)
                    waiting = str(exc)
                except StorageFault as exc:  # the writer logs the fault itself, once
                    waiting = None
                    log.warning("background job %s skipped: %s", name, exc)
                except Exception:
                    waiting = None
                    log.exception("background job %s failed", name)

        return self.spawn(loop(), name)

    @property
    def names(self) -> list[str]:
        """The running tasks' names (for /metrics-free introspection in tests and logs)."""
        return sorted(t.get_name() for t in self._tasks)

    async def stop(self) -> None:
        """Cancel every task and wait until each has ended; later `spawn` calls are refused."""
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
